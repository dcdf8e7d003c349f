"""artopt: neural style transfer driven by a learned optimizer.

The pipeline, one sub-package per role:
  tasks/               optimizee problems as loss closures (quadratic, MNIST, CIFAR-10, neural art)
  learned_optimizers/  the coordinatewise LSTM optimizer, its torch.optim face and weight files
  optimizers/          hand-designed baselines and their learning-rate search
  outer_trainers/      meta-training by truncated backprop through unrolled optimization
  style/               style loss, loss networks, images and the stylize engine
  cli.py, web.py       the command line and the Gradio app
"""

__version__ = "0.1.0"
