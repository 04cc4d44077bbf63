"""The network: CLIP encoder, prompters, SAM backbone and their composition (no Lightning here)."""

from rsrefseg.models.clip_encoder import ClipEncoder, TextEncoding, build_open_clip_model, build_tokenizer
from rsrefseg.models.finetune import LoraSettings, configure_finetuning, parameter_report
from rsrefseg.models.prompter import ActivationV1Prompter, CascadedPrompter, Prompter, PrompterOutput
from rsrefseg.models.rsrefseg2 import RSRefSeg2, RSRefSeg2Output
from rsrefseg.models.sam2_backbone import Sam2Backbone, Sam2Features, build_sam2
from rsrefseg.models.sam_backbone import SamBackbone, build_sam_vit

__all__ = [
    "ActivationV1Prompter",
    "CascadedPrompter",
    "ClipEncoder",
    "LoraSettings",
    "Prompter",
    "PrompterOutput",
    "RSRefSeg2",
    "RSRefSeg2Output",
    "Sam2Backbone",
    "Sam2Features",
    "SamBackbone",
    "TextEncoding",
    "build_open_clip_model",
    "build_sam2",
    "build_sam_vit",
    "build_tokenizer",
    "configure_finetuning",
    "parameter_report",
]
