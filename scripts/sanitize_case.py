"""A tiny fused forward + backward on CUDA for compute-sanitizer (memcheck, racecheck): every kernel variant
the shapes reach (vectorised and tail chunks, masks and values, with and without gi), in two dtypes."""
import torch

import contres

assert contres.build_info()["cuda_kernels"], contres.build_info()
for dtype in (torch.float32, torch.float16):
    for layer, activation in (("single", "relu"), ("single", "tanh"), ("single", "identity"), ("double_sym", "leaky_relu")):
        for H, W in ((8, 8), (5, 7)):  # H*W % 8 == 0 takes the vector path, 35 the tail path
            for checkpoint in (False, 2):
                block = contres.ODEBlock(4, n_steps=3, layer=layer, activation=activation, backend="fused",
                                         checkpoint=checkpoint).to("cuda", dtype)
                x = torch.randn(2, 4, H, W, device="cuda", dtype=dtype, requires_grad=True)
                block(x).float().square().sum().backward()
torch.cuda.synchronize()
print("sanitize case OK")
