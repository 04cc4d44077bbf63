"""Whether the Hugging Face hub may be reached, decided once at import, where the decision still counts.

huggingface_hub reads ``HF_HUB_OFFLINE`` into ``huggingface_hub.constants`` when it is first imported
(open_clip imports it), so setting the variable later changes nothing but error messages. The
package therefore decides at its own import, before anything pulls the hub in:

- ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set to any value is the user's choice and kept;
  ``HF_HUB_OFFLINE=0`` lets open_clip tags and SigLIP tokenizers download;
- unset, the hub is offline: a run uses only files it names or finds in the local cache, and an
  offline machine fails at once instead of waiting out connection timeouts.
"""

from __future__ import annotations

import os
import sys

OFFLINE_VARIABLE = "HF_HUB_OFFLINE"
#: transformers' older name, which huggingface_hub also honours
LEGACY_OFFLINE_VARIABLE = "TRANSFORMERS_OFFLINE"
#: the values huggingface_hub reads as true
_TRUE = {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """Whether the environment puts the hub offline, read the way huggingface_hub reads it."""
    value = os.environ.get(OFFLINE_VARIABLE) or os.environ.get(LEGACY_OFFLINE_VARIABLE)
    return value is not None and value.upper() in _TRUE


def apply_default_hub_mode() -> bool:
    """Set ``HF_HUB_OFFLINE=1`` unless the user chose a mode; returns whether the hub is offline.

    A huggingface_hub imported before this package read the environment without the default;
    its constant is brought in line so that what it does matches what errors report.
    """
    if not (os.environ.get(OFFLINE_VARIABLE) or os.environ.get(LEGACY_OFFLINE_VARIABLE)):
        os.environ[OFFLINE_VARIABLE] = "1"
    offline = hub_offline()
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = offline
    return offline
