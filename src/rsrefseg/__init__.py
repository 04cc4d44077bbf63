"""RSRefSeg 2: referring remote-sensing image segmentation."""

from rsrefseg.hub import apply_default_hub_mode

__version__ = "0.1.0"

# before any submodule imports open_clip (and with it huggingface_hub, which reads the mode once)
apply_default_hub_mode()
