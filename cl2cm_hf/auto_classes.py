"""The CL2CM model types registered with transformers' Auto classes, for in-process use, and the
auto_map that saved checkpoints carry. Imported by the first use of any of the package's top-level
names (`cl2cm_hf.__getattr__`); ``import cl2cm_hf.auto_classes`` registers them explicitly."""

from transformers import AutoConfig, AutoModel, AutoProcessor
from transformers.models.auto.video_processing_auto import AutoVideoProcessor  # the top-level name needs torchvision

from cl2cm_hf.configuration_cl2cm import CL2CMCrossLingualConfig, CL2CMCrossModalConfig
from cl2cm_hf.modeling_cl2cm import CL2CMCrossLingualModel, CL2CMCrossModalModel
from cl2cm_hf.processing_cl2cm import CL2CMProcessor, CL2CMTextProcessor
from cl2cm_hf.video_processing_cl2cm import CL2CMVideoProcessor

# In-process use: AutoConfig/AutoModel resolve our model types from the installed package.
AutoConfig.register(CL2CMCrossLingualConfig.model_type, CL2CMCrossLingualConfig, exist_ok=True)
AutoConfig.register(CL2CMCrossModalConfig.model_type, CL2CMCrossModalConfig, exist_ok=True)
AutoModel.register(CL2CMCrossLingualConfig, CL2CMCrossLingualModel, exist_ok=True)
AutoModel.register(CL2CMCrossModalConfig, CL2CMCrossModalModel, exist_ok=True)
# One processor class per config type: stage-1 models read text only; cross-modal folders name
# their own class (text-only or with an image processor) in processor_config.json.
AutoProcessor.register(CL2CMCrossLingualConfig, CL2CMTextProcessor, exist_ok=True)
AutoProcessor.register(CL2CMCrossModalConfig, CL2CMProcessor, exist_ok=True)
AutoVideoProcessor.register(CL2CMCrossModalConfig, CL2CMVideoProcessor, exist_ok=True)
# Saved checkpoints: auto_map in config.json and the code files copied next to the weights.
CL2CMCrossLingualConfig.register_for_auto_class()
CL2CMCrossModalConfig.register_for_auto_class()
CL2CMCrossLingualModel.register_for_auto_class("AutoModel")
CL2CMCrossModalModel.register_for_auto_class("AutoModel")
CL2CMTextProcessor.register_for_auto_class("AutoProcessor")
CL2CMProcessor.register_for_auto_class("AutoProcessor")
CL2CMVideoProcessor.register_for_auto_class("AutoVideoProcessor")
