"""A folder of files through a zoo task on a Ray cluster, into JSON Lines or Parquet.

    python deploy/ray/zoo_batch.py image-classification /data/photos /data/labels.jsonl --top-k 3
    python deploy/ray/zoo_batch.py speech-recognition s3://bucket/calls/ calls.parquet --concurrency 8

Each input's result is the object `zoo run TASK FILE --json` prints for it: a JSON Lines output
holds exactly those lines, sorted by path, as one `zoo run` over the folder would print them; a
Parquet output is a folder of files with a `path` and a `zoo` (JSON text) column. Failed inputs
are recorded as `{"input", "model", "error"}` objects, and the exit code is then 1 as with `zoo run`.

Run it where `ray.init()` finds the cluster (RAY_ADDRESS, or inside `ray job submit`; see
deploy/README.md) with `pip install 'zoo[ray]'` on the driver and on every node. Each node needs
the task's weights in its Hugging Face cache (`zoo download TASK`) unless they are bundled.
"""

import argparse
import json
import os
import sys

import ray

import zoo
import zoo.ray


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Any other --NAME [VALUE] is the task's option of that name, as `zoo run` takes it.",
    )
    parser.add_argument("task", help="a zoo task or alias (see `zoo list`)")
    parser.add_argument("inputs", help="a folder (or a file, or a URI such as s3://bucket/dir) of input files")
    parser.add_argument("output", help="NAME.jsonl (one file) or NAME.parquet (a folder of Parquet files)")
    parser.add_argument("--model", help="a catalogue id, Hub id or local folder (default: the task's)")
    parser.add_argument("--concurrency", type=int, default=2, help="actors, each loading the model once (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (and CPUs reserved) per actor (default 1)")
    parser.add_argument("--batch-size", type=int, default=16, help="rows per batch sent to an actor (default 16)")
    args, rest = parser.parse_known_args(argv)
    # The task's options, as `zoo run` spells them: `--top-k 3`, `--language de`, `--explain`.
    options = {}
    while rest:
        name = rest.pop(0)
        if not name.startswith("--"):
            parser.error(f"unexpected argument {name!r}")
        if "=" in name:
            name, value = name.split("=", 1)
        elif rest and not rest[0].startswith("--"):
            value = rest.pop(0)
        else:
            value = True
        options[name[2:].replace("-", "_")] = value

    task = next((t for t in zoo.tasks() if args.task in (t["task"], *t["aliases"])), None)
    if task is None:
        parser.error(f"unknown task {args.task!r}; tasks: {', '.join(t['task'] for t in zoo.tasks())}")
    if not args.output.endswith((".jsonl", ".parquet")):
        parser.error(f"{args.output}: the output is NAME.jsonl or NAME.parquet")

    ray.init()
    files = ray.data.read_binary_files(args.inputs, include_paths=True, file_extensions=task["extensions"])
    results = zoo.ray.map_batches(
        files, task["task"], column="bytes", name_column="path", model=args.model, concurrency=args.concurrency,
        threads=args.threads, batch_size=args.batch_size, **options,
    ).select_columns(["path", "zoo"])
    # Run once; writing and counting the failures then read the results, not the inputs again.
    results = results.materialize()
    failed = 0
    if args.output.endswith(".parquet"):
        results.write_parquet(args.output)
        failed = sum("error" in json.loads(row["zoo"]) for row in results.iter_rows())
    else:
        # Sorted by path, as `zoo run` orders a folder, and renamed into place only when whole.
        rows = sorted(results.iter_rows(), key=lambda row: row["path"])
        partial = args.output + ".partial"
        with open(partial, "w", encoding="utf-8") as out:
            for row in rows:
                out.write(row["zoo"] + "\n")
                failed += "error" in json.loads(row["zoo"])
        os.replace(partial, args.output)
    print(f"zoo_batch: {args.output}: {failed} input(s) failed" if failed else f"zoo_batch: wrote {args.output}",
          file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
