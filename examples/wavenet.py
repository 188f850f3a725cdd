"""WaveNet's stack: causal dilated Conv1D layers at rates 1, 2, 4, ... 512.

Ten ``clatrous.Conv1D(4, 2, padding="causal", dilation_rate=2**l)`` layers
(tanh between them) over a synthetic signal, 4096 samples of a chirp, a
slow sine and noise.  Each layer doubles what an output sample sees: after layer l the
receptive field is 2**(l + 1) samples, all in the past (causal).  The
receptive field is measured, not computed: an impulse at sample 3000 goes
through the stack (positive weights, so nothing cancels) and the samples it
reaches are counted after each layer.  Every layer's output is checked
against clatrous.reference.conv1d.

Saves wavenet.png in the current folder.  Set CLATROUS_DEVICE to pick the
OpenCL device.

    python examples/wavenet.py
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import clatrous
from clatrous import reference, runtime

info = runtime.get_runtime().info
print(f"clatrous {clatrous.__version__} on {info.platform} | {info.name} ({info.kind})")

n, channels, depth = 4096, 4, 10
t = np.arange(n) / n
rng = np.random.default_rng(0)
chirp = np.sin(2 * np.pi * (40 * t + 300 * t**2))
signal = chirp + 0.5 * np.sin(2 * np.pi * 5 * t) + 0.2 * rng.standard_normal(n)

layers = []
for level in range(depth):
    layer = clatrous.Conv1D(channels, 2, padding="causal", dilation_rate=2**level, activation="tanh")
    layer.build((None, n, 1 if level == 0 else channels))
    layers.append(layer)

# The signal through the stack, each layer checked against the reference.
x = signal[None, :, None].astype(np.float32)
outputs = []
for layer in layers:
    y = layer(x)
    expected = reference.conv1d(x, layer.kernel, layer.bias, padding="causal",
                                dilation_rate=layer.dilation_rate, activation="tanh")  # fmt: skip
    assert np.abs(y - expected).max() < 1e-4
    outputs.append(y)
    x = y

# The receptive field, measured with an impulse and positive weights.
impulse_at = 3000
x = np.zeros((1, n, 1), np.float32)
x[0, impulse_at, 0] = 1
reached = []
for layer in layers:
    positive = [np.abs(w) + 0.1 for w in layer.get_weights()[:1]] + [np.zeros(channels)]
    probe = clatrous.Conv1D.from_config(layer.get_config() | {"activation": "linear"})
    probe.set_weights(positive)
    x = probe(x)
    touched = np.flatnonzero(np.abs(x[0]).max(axis=1) > 0)
    assert touched.min() == impulse_at, "causal: nothing before the impulse moves"
    reached.append(int(touched.max() - impulse_at + 1))
expected_fields = [2 ** (level + 1) for level in range(depth)]
assert reached == expected_fields, (reached, expected_fields)
print("receptive field after each layer:", reached)

fig, axes = plt.subplots(1, 2, figsize=(15, 4.8))
axes[0].plot(signal, lw=0.6, label="input")
axes[0].plot(outputs[-1][0, :, 0], lw=0.8, label="channel 0 after 10 layers")
axes[0].set_xlim(0, n)
axes[0].set_xlabel("sample")
axes[0].legend(loc="lower left")
axes[0].set_title("a random (untrained) WaveNet stack on a chirp, a sine and noise")
axes[1].semilogy(range(1, depth + 1), reached, "o-", label="measured (impulse)")
axes[1].semilogy(range(1, depth + 1), expected_fields, "k--", lw=0.8, label="2**layers")
axes[1].set_xlabel("layers (rates 1, 2, 4, ... 512)")
axes[1].set_ylabel("receptive field (samples)")
axes[1].legend()
axes[1].set_title("the receptive field doubles with each layer")
fig.suptitle(f"Causal dilated Conv1D layers ({info.name})")
fig.savefig("wavenet.png", bbox_inches="tight", dpi=70)
print("saved wavenet.png")
