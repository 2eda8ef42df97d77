"""ddpm_lib: a small, readable class-conditional DDPM library for the ddpm-course.

One module per idea:

- ``schedules``  noise schedules (linear, cosine) and their precomputed terms
- ``diffusion``  forward noising, the training loss, DDPM and DDIM samplers, guidance
- ``unet``       the class-conditional U-Net
- ``ema``        exponential moving average of the weights
- ``data``       embedded datasets (digits, textures) and folder datasets
- ``config``     presets and validated configuration
- ``checkpoint`` atomic writes, self-describing checkpoints, run directories
- ``dist``       torchrun environment, process groups and the collectives we use
- ``launch``     run torchrun from a notebook cell with live output
- ``train`` / ``sample`` / ``evaluate``  the command-line programs
- ``metrics``    the domain classifier and class accuracy of samples
- ``viz``        image grids and plots
- ``check``      instant checks of the pieces a learner writes in the notebooks
"""

__version__ = "0.1.0"
