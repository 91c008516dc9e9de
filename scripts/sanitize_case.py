"""A tiny fused forward + backward on CUDA for compute-sanitizer (memcheck, racecheck): every kernel variant
the shapes reach (vectorised and tail chunks, masks and values, with and without a second input, the bias reduced
in the pass (C % 8 == 0) or by ATen), every method, and the tv passes with 1, 8 and 32 lanes per pixel."""
import torch

import contres

assert contres.build_info()["cuda_kernels"], contres.build_info()
# cuDNN's Hopper kernels are not ours to check and racecheck cannot run some of them; ATen's own
# convolutions give our passes the same inputs.
torch.backends.cudnn.enabled = False


def run(channels, dtype, H, W, **kw):
    block = contres.ODEBlock(channels, n_steps=3, backend="fused", **kw).to("cuda", dtype)
    x = torch.randn(1, channels, H, W, device="cuda", dtype=dtype, requires_grad=True)
    block(x).float().square().sum().backward()


for dtype, channels in ((torch.float32, 4), (torch.float32, 8), (torch.float16, 16)):
    for layer, activation in (("single", "relu"), ("single", "tanh"), ("single", "identity"), ("double_sym", "leaky_relu")):
        for H, W in ((8, 8), (5, 7)):  # with batch 1 and 4 channels, 5x7 leaves a tail chunk
            for checkpoint in (False, 2):
                run(channels, dtype, H, W, layer=layer, activation=activation, checkpoint=checkpoint)
for method, memory in (("rk4", "states"), ("leapfrog", "states"), ("leapfrog", "reversible")):
    for layer, activation in (("single", "relu"), ("double_sym", "tanh")):
        run(8, torch.float32, 5, 7, layer=layer, activation=activation, method=method, memory=memory)
for channels in (3, 8, 40):
    for layer, activation in (("single", "sigmoid"), ("double_sym", "relu")):
        run(channels, torch.float32, 5, 6, layer=layer, activation=activation, norm="tv", method="rk4")
torch.cuda.synchronize()
print("sanitize case OK")
