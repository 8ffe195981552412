"""Memory of encoding one oversized record: the clipping encoder against rendering it whole.

Each case runs in a fresh process (peak RSS is per process) and encodes one two-turn conversation
whose response has ``--sizes`` megabytes of text, with ``max_length`` tokens kept, using the tiny
model's offline byte tokenizer (ChatML). ``clipped`` is :func:`prefalign.data.chat.encode_conversation`;
``whole`` is the same function with clipping switched off (the encoder before issue 16: render and
tokenise the whole record, then cut). Reported per case: the increase of the peak RSS over the
process's RSS before encoding (Python and the Rust tokenizer), the tracemalloc peak (Python
objects only) and the seconds taken. Results go to ``benchmarks/results/long_record_memory.json``.

    python benchmarks/long_record_memory.py [--sizes 2 21.6] [--whole-sizes 0.5 2] [--max-length 4096]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "long_record_memory.json"


def one_case(megabytes: float, max_length: int, whole: bool) -> dict:
    """Encode one record of ``megabytes`` MB in this process and measure it."""
    import prefalign.data.chat as chat
    from prefalign.models.tokenizer import build_tokenizer

    tokenizer = build_tokenizer("chatml")
    if whole:
        chat.max_token_chars = lambda tokenizer: 10**12  # no clipping: the old encoder
    line = "All work and no play makes a dull model. "
    response = line * int(megabytes * 1e6 / len(line))
    messages = [{"role": "user", "content": "Write it out."}, {"role": "assistant", "content": response}]
    chat.encode_conversation(tokenizer, messages[:1] + [{"role": "assistant", "content": "ok"}], max_length)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    start = time.perf_counter()
    encoded = chat.encode_conversation(tokenizer, messages, max_length)
    seconds = time.perf_counter() - start
    _, python_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert len(encoded.input_ids) == max_length and encoded.truncated
    return {
        "encoder": "whole" if whole else "clipped",
        "record_mb": round(len(response) / 1e6, 2),
        "max_length": max_length,
        "peak_rss_increase_mb": round((after - before) / 1024, 1),  # ru_maxrss is in KiB on Linux
        "tracemalloc_peak_mb": round(python_peak / 2**20, 1),
        "seconds": round(seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[2.0, 21.6])
    parser.add_argument("--whole-sizes", type=float, nargs="+", default=[0.5, 2.0])
    parser.add_argument("--max-length", type=int, default=4096)
    parser.add_argument("--case", nargs=2, help=argparse.SUPPRESS)  # internal: one case per process
    args = parser.parse_args()
    if args.case:
        print(json.dumps(one_case(float(args.case[0]), args.max_length, args.case[1] == "whole")))
        return
    cases = [(s, "whole") for s in args.whole_sizes] + [(s, "clipped") for s in args.sizes]
    results = []
    for size, encoder in cases:
        out = subprocess.run(
            [sys.executable, __file__, "--case", str(size), encoder, "--max-length", str(args.max_length)],
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(results[-1])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {"machine": platform.platform(), "python": platform.python_version(), "cases": results}, indent=2
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
