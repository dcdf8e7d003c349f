import os

import torch

# Two shared CPU cores: tests are small, and one thread keeps them deterministic and polite.
torch.set_num_threads(1)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
