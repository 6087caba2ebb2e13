"""The accelerate launch recipes under trainer/configs/accelerate/ are valid accelerate configs.

Each file is read by accelerate's own config classes (what `accelerate launch --config_file` does),
then merged into the launch command exactly as `accelerate launch` does before it starts anything;
FSDP settings are also turned into accelerate's FSDP plugin. No GPU is needed: nothing is launched.
"""

import os
from pathlib import Path
from unittest import mock

import pytest
import yaml
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.utils import DistributedType

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "trainer" / "configs" / "accelerate"
RECIPE = REPO / "trainer" / "configs" / "multi30k_clip_mbert_de.yaml"

EXPECTED = {
    "ddp_multi_gpu.yaml": DistributedType.MULTI_GPU,
    "ddp_multi_node.yaml": DistributedType.MULTI_GPU,
    "fsdp.yaml": DistributedType.FSDP,
    "deepspeed_zero2.yaml": DistributedType.DEEPSPEED,
}


def test_every_file_is_known():
    assert sorted(p.name for p in FOLDER.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_loads_with_accelerate_config_classes(name):
    path = FOLDER / name
    config = load_config_from_file(str(path))
    assert isinstance(config, ClusterConfig)
    assert config == ClusterConfig.from_yaml_file(str(path))
    assert config.distributed_type == EXPECTED[name]
    assert not config.use_cpu
    assert config.num_processes >= 2 and config.num_machines >= 1
    assert config.num_processes % config.num_machines == 0, "num_processes is the total over all machines"
    # Mixed precision is left to the Trainer recipe (--bf16 true): one place decides.
    assert config.mixed_precision in (None, "no")
    # Every file starts with the command that runs it.
    assert f"--config_file trainer/configs/accelerate/{name}" in path.read_text()
    raw = yaml.safe_load(path.read_text())
    assert raw["distributed_type"] == EXPECTED[name].value


def _launch_args(name: str, *extra: str):
    """The `accelerate launch --config_file ... trainer/run.py <recipe>` arguments after accelerate
    merged the config file into them (its own code path, nothing started)."""
    from accelerate.commands import launch

    parser = launch.launch_command_parser()
    argv = ["--config_file", str(FOLDER / name), *extra, str(REPO / "trainer" / "run.py"), str(RECIPE)]
    known = set(vars(parser.parse_args(argv)))
    args, _, _ = launch._validate_launch_command(parser.parse_args(argv))
    return args, known


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_launch_reads_every_setting(name):
    args, known = _launch_args(name)
    config = load_config_from_file(str(FOLDER / name))
    flags = {"multi_gpu": args.multi_gpu, "use_fsdp": args.use_fsdp, "use_deepspeed": args.use_deepspeed}
    want = {
        DistributedType.MULTI_GPU: "multi_gpu", DistributedType.FSDP: "use_fsdp", DistributedType.DEEPSPEED: "use_deepspeed",
    }[config.distributed_type]
    assert flags == {key: key == want for key in flags}
    assert args.num_processes == config.num_processes and args.num_machines == config.num_machines
    # Plugin settings are copied onto launch options of the same name: a misspelt key would be
    # copied silently and ignored, so each must be a real `accelerate launch` option.
    for key in {**config.fsdp_config, **config.deepspeed_config}:
        assert key in known, f"{name}: {key} is not an accelerate launch option"
    # The training script and its recipe reach the launched processes unchanged.
    assert args.training_script.endswith("trainer/run.py") and args.training_script_args == [str(RECIPE)]


def test_command_line_overrides_the_file():
    args, _ = _launch_args("ddp_multi_gpu.yaml", "--num_processes", "4")
    assert args.num_processes == 4 and args.multi_gpu


def test_multi_node_settings():
    config = load_config_from_file(str(FOLDER / "ddp_multi_node.yaml"))
    assert config.num_machines >= 2 and config.machine_rank == 0
    assert config.main_process_ip and isinstance(config.main_process_port, int)
    assert config.rdzv_backend == "static" and config.same_network
    args, _ = _launch_args("ddp_multi_node.yaml", "--machine_rank", "1", "--main_process_ip", "192.168.0.7")
    assert args.machine_rank == 1 and args.main_process_ip == "192.168.0.7" and args.num_machines == config.num_machines


def test_fsdp_settings_build_accelerate_plugin():
    """The FSDP section becomes the environment `accelerate launch` gives each process, and that
    environment becomes accelerate's FSDP plugin (wrap policy, layer class, full state dict)."""
    import transformers
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    args, _ = _launch_args("fsdp.yaml")
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true"
    with mock.patch.dict(os.environ, env):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"  # stage folders hold ordinary weights
    assert plugin.auto_wrap_policy is not None
    for cls in plugin.transformer_cls_names_to_wrap:  # a layer class transformers really has
        assert hasattr(transformers, cls) or any(
            hasattr(getattr(transformers.models, m, None), cls) for m in ("bert", "xlm_roberta", "clip")
        ), cls
    # The recipe the README pairs it with uses a BERT text tower.
    assert "bert" in yaml.safe_load(RECIPE.read_text())["text_model"]


def test_ddp_recipes_keep_equal_batches():
    """Contrastive negatives span all processes: every process needs a full batch each step."""
    recipe = yaml.safe_load(RECIPE.read_text())
    assert recipe["dataloader_drop_last"] is True
