"""The method's settings (`CL2CMArguments`): every loss weight, temperature and switch of CL2CM's two
stages, so the paper's ablations are recipe files. Each field declares its range (`Allowed`)."""

from dataclasses import dataclass, field

from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.torch_state import cpu_threads
from cl2cm_hf.training.allowed import NAME, Allowed, above, at_least, check_allowed, one_of


@dataclass
class CL2CMArguments:
    stage: str = field(default="both", metadata={"help": "cl | cm | both", "allowed": one_of("cl", "cm", "both")})
    loss: str = field(
        default="infonce", metadata={"help": "Contrastive loss: infonce | triplet", "allowed": one_of("infonce", "triplet")}
    )
    margin: float = field(default=0.2, metadata={"help": "VSE++ triplet margin.", "allowed": at_least(0)})
    lambda_word: float = field(
        default=0.1, metadata={"help": "Stage 1: weight of the OT word alignment.", "allowed": at_least(0)}
    )
    ot_epsilon: float = field(default=0.1, metadata={"help": "Sinkhorn entropic regularisation.", "allowed": above(0)})
    ot_iterations: int = field(default=50, metadata={"help": "Sinkhorn iterations.", "allowed": at_least(1)})
    lambda_mt: float = field(
        default=1.0,
        metadata={"help": "Stage 2: weight of visual vs MT-caption contrastive loss.", "allowed": at_least(0)},
    )
    lambda_kt: float = field(
        default=1.0, metadata={"help": "Stage 2: weight of relational distillation.", "allowed": at_least(0)}
    )
    kt_temperature: float = field(default=1.0, metadata={"help": "Distillation temperature T.", "allowed": above(0)})
    kt_teacher_keys: str = field(default="caption", metadata={
        "help": "What the teacher compares an MT caption with: caption (the pair's source caption) | item (the mean of "
                "the teacher embeddings of all the item's source captions in the training set; needs precompute_teacher).",
        "allowed": one_of("caption", "item")})
    kt_teacher_entropy: float | None = field(default=None, metadata={
        "help": "Recalibrate every teacher distribution to this entropy in nats (a temperature per row); unset: off.",
        "allowed": at_least(0)})
    kt_student_scale: str = field(default="own", metadata={
        "help": "The scale of the student's similarities in the distillation term: own (its learned contrastive scale) | "
                "teacher (the teacher's, so the term shapes the student's relations without pulling on its contrastive scale).",
        "allowed": one_of("own", "teacher")})
    kt_queue_size: int = field(default=0, metadata={
        "help": "Relations beyond the batch: a queue of this many recent (student visual, teacher key) pairs; 0: off.",
        "allowed": at_least(0)})
    kt_neighbour_group_size: int = field(default=0, metadata={
        "help": "Teacher-neighbourhood batches: each batch is made of groups of this many items that are near each "
                "other in the teacher's space (needs precompute_teacher; must divide the batch size); 0: random batches.",
        "allowed": at_least(0)})
    precompute_teacher: bool = field(default=False, metadata={"help": "Encode the training set with the teacher once."})
    cross_lingual_model: str | None = field(default=None, metadata={"allowed": NAME, "help": "stage cm: an existing stage-1 folder as teacher."})
    cl_num_train_epochs: float | None = field(
        default=None, metadata={"help": "Stage 1 epochs (default: num_train_epochs).", "allowed": above(0)}
    )
    cl_learning_rate: float | None = field(
        default=None, metadata={"help": "Stage 1 learning rate (default: learning_rate).", "allowed": above(0)}
    )
    cl_first_caption_only: bool = field(default=False, metadata={
        "help": "Stage 1 trains on caption 1 and its translation only (caption_id '<visual_id>#1'): where one MT line "
                "per image (of caption 1) is paired with all of the image's captions, only that pair is a translation."})
    on_nonfinite: str = field(
        default="stop",
        metadata={"help": "NaN/Inf loss: stop | skip (the batch, counted in logs)", "allowed": one_of("stop", "skip")},
    )
    max_skipped_fraction: float = field(
        default=0.05,
        metadata={
            "help": "on_nonfinite: skip: a stage that skipped more than this fraction of its optimizer steps fails at its "
            "end, naming the non-finite loss terms, and publishes nothing.",
            "allowed": Allowed(0, 1),
        },
    )
    resume: bool = field(default=False, metadata={
        "help": "Continue this output_dir's run from its last Trainer checkpoint of each stage; refused when the "
                "settings that change results differ from the recorded ones (run.json)."})
    resume_allow_changes: list[str] = field(default_factory=list, metadata={
        "help": "Settings that --resume may accept with a new value (recorded in run.json): "
                "--resume_allow_changes key1 key2 ...", "allowed": Allowed()})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Start a new run in an output_dir that holds another run's outputs, replacing them."})
    push_to_hub_id: str | None = field(default=None, metadata={"allowed": NAME, "help": "Push the final folder to this hub repo."})
    query: str | None = field(default=None, metadata={"allowed": NAME, "help": "After training: run this query against the test gallery."})
    cpu_threads: str | int = field(default="auto", metadata={
        "help": "Torch CPU threads for training and evaluation: auto (torch's count: OMP_NUM_THREADS, else one per "
                "available core) | a number. The count changes low bits of the weights; 1 is fastest next to other jobs.",
        "allowed": Allowed()})  # checked by torch_state.cpu_threads (auto or a whole number >= 1)

    def __post_init__(self):
        check_allowed(self)
        cpu_threads(self.cpu_threads)  # raises naming the field
        for key, used in (("kt_teacher_keys", self.kt_teacher_keys == "item"), ("kt_neighbour_group_size", self.kt_neighbour_group_size)):
            if used and not self.precompute_teacher:
                raise CL2CMError(f"{key}={getattr(self, key)!r} reads the teacher's embeddings of the whole training set: "
                                 "set precompute_teacher: true")
        if self.kt_neighbour_group_size == 1:
            raise CL2CMError("kt_neighbour_group_size=1: expected 0 (random batches) or at least 2")

    @property
    def needs_teacher_embeddings(self) -> bool:
        """Whether stage 2 reads the teacher's embeddings (the distillation term, or neighbourhood batches)."""
        return bool(self.lambda_kt or self.kt_neighbour_group_size)
