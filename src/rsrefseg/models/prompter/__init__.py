"""Prompters: turn CLIP's image and text tokens into SAM's sparse and dense prompts."""

from rsrefseg.models.prompter.activation_v1 import ActivationV1Prompter
from rsrefseg.models.prompter.base import Prompter, PrompterOutput
from rsrefseg.models.prompter.cascaded import CascadedPrompter

__all__ = ["ActivationV1Prompter", "CascadedPrompter", "Prompter", "PrompterOutput"]
