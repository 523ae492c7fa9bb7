"""The command line: thin over the Python API. Heavy imports happen inside the commands."""

from __future__ import annotations

import argparse
import sys

from .errors import StreamsrError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def cmd_convert_infdit(args: argparse.Namespace) -> int:
    from .convert import convert_infdit

    report = convert_infdit(args.src, args.output, rope_table=args.rope_table,
                            k_uses_q_norm=not args.fixed_k_norm)
    for line in report.lines():
        print(line)
    print(f"wrote model dir {args.output}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamsr",
        description="Inf-DiT-style block-streaming diffusion upsampler (x4) inside a fixed memory budget.",
        epilog="Exit codes: 0 done, 1 failed, 2 bad input or usage, 130 interrupted.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    conv = sub.add_parser("convert-infdit", help="convert an official Inf-DiT checkpoint into a model dir",
                          description="Convert an official Inf-DiT checkpoint (DeepSpeed/SAT .pt with a "
                                      "'module' dict, read weights-only, or a safetensors file with the "
                                      "official key names) into a streamsr model dir. Unknown or missing "
                                      "keys are an error; known unused keys are reported.")
    conv.add_argument("src", help="mp_rank_00_model_states.pt or a .safetensors file")
    conv.add_argument("-o", "--output", required=True, help="model dir to write")
    conv.add_argument("--rope-table", type=int, default=None,
                      help="RoPE table size when the checkpoint stores no RoPE buffers (default 1024)")
    conv.add_argument("--fixed-k-norm", action="store_true",
                      help="use k_layer_norm for K (not the official model: it normalises K with q_layer_norm)")
    conv.set_defaults(func=cmd_convert_infdit)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except StreamsrError as exc:
        print(f"streamsr: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("streamsr: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
