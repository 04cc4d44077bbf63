"""Prompters: turn CLIP's image and text tokens into SAM's sparse and dense prompts."""

from rsrefseg.models.prompter.base import PrompterOutput
from rsrefseg.models.prompter.cascaded import CascadedPrompter

__all__ = ["CascadedPrompter", "PrompterOutput"]
