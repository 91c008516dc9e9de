"""A tiny fused forward + backward on CUDA for compute-sanitizer (memcheck, racecheck): every kernel variant
the shapes reach (vectorised and tail chunks, masks and values, with and without gi, the bias reduced in the
pass (C % 8 == 0) or by ATen), in two dtypes."""
import torch

import contres

assert contres.build_info()["cuda_kernels"], contres.build_info()
# cuDNN's Hopper kernels are not ours to check and racecheck cannot run some of them; ATen's own
# convolutions give our passes the same inputs.
torch.backends.cudnn.enabled = False
for dtype, channels in ((torch.float32, 4), (torch.float32, 8), (torch.float16, 16)):
    for layer, activation in (("single", "relu"), ("single", "tanh"), ("single", "identity"), ("double_sym", "leaky_relu")):
        for H, W in ((8, 8), (5, 7)):  # with batch 1 and 4 channels, 5x7 leaves a tail chunk
            for checkpoint in (False, 2):
                block = contres.ODEBlock(channels, n_steps=3, layer=layer, activation=activation, backend="fused",
                                         checkpoint=checkpoint).to("cuda", dtype)
                x = torch.randn(1, channels, H, W, device="cuda", dtype=dtype, requires_grad=True)
                block(x).float().square().sum().backward()
torch.cuda.synchronize()
print("sanitize case OK")
