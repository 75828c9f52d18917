"""The math and the model: schedules, diffusion, parameterizations, losses, U-Net, samplers."""
