"""The loop latency in a recording of the PulseAudio loop (scripts/bench/latency).

A burst played into a sink that a monitoring loop feeds back into itself
comes back once per trip around the loop: the echoes' onsets are spaced
by exactly the loop's input→output latency. Prints the median spacing of
the first echoes and their range, with the run's xrun figures.

    echoes.py LABEL RECORDING XRUNS [NOTE]
    echoes.py LABEL RECORDING --engine RECORD.json

RECORDING: a WAV (a take's mixdown) or raw s16le stereo at 48 kHz (parec).
XRUNS: as the loop reported them; --engine: the figures `record --json`
printed for the take.
"""

import array
import json
import sys
import wave

RATE = 48000
THRESHOLD = 0.05 * 32768
ECHOES = 12
# The burst comes whenever the loop started running: find its block, then
# look at the 8 s from there.
BLOCK = RATE // 10
WINDOW = RATE * 8


def left_channel(path):
    if path.endswith(".wav"):
        w = wave.open(path)
        return array.array("h", w.readframes(w.getnframes()))[0::2]
    with open(path, "rb") as f:
        raw = f.read()
    return array.array("h", raw[: len(raw) // 4 * 4])[0::2]


def onsets(x):
    start = next((b for b in range(0, len(x), BLOCK) if max(map(abs, x[b:b + BLOCK])) > THRESHOLD), 0)
    x = x[start:start + WINDOW]
    found, i = [], 0
    while i < len(x) and len(found) < ECHOES:
        if abs(x[i]) > THRESHOLD:
            found.append(i)
            i += 48  # past this echo (a 1 ms burst): the next onset is the next echo
            while i < len(x) and max(abs(v) for v in x[i:i + 24]) > THRESHOLD:
                i += 24
        i += 1
    return found


def engine_figures(path):
    """(xruns, the rest) from `record --json`'s output."""
    with open(path) as f:
        rec = json.load(f)
    e = rec["engine"]
    return e["xruns"], (f", underrun frames {e['underrun_frames']}, overrun frames {e['overrun_frames']}, "
                        f"monitor frames late {e['monitor_short_frames']}, {rec['seconds']:.0f} s; "
                        f"device latency in {e['input_latency_ms']:.1f} ms + out {e['output_latency_ms']:.1f} ms")


def main():
    label, path = sys.argv[1], sys.argv[2]
    if sys.argv[3] == "--engine":
        xruns, detail = engine_figures(sys.argv[4])
    else:
        xruns, detail = sys.argv[3], (sys.argv[4] if len(sys.argv) > 4 else "")
    at = onsets(left_channel(path))
    gaps = sorted(b - a for a, b in zip(at, at[1:]))
    if not gaps:
        print(f"  {label}: no echoes found, xruns {xruns}{detail}")
        return
    gap = gaps[len(gaps) // 2]
    print(f"  {label}: latency {gap / 48:6.2f} ms (median of {len(gaps)} echoes, "
          f"range {gaps[0] / 48:.2f}-{gaps[-1] / 48:.2f}), xruns {xruns}{detail}")


if __name__ == "__main__":
    main()
