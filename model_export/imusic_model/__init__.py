"""imusic_model: the PyTorch side of imusic's blendshape models (training, distillation, export).

Needs the ``[train]`` extra (torch); export also needs ``[export]``. The light runtime that runs the
exported files lives in ``imusic.infer`` and never imports this package.
"""
