#!/usr/bin/env python3
"""Builds every ```rust block of README.md as a reader would paste it: as the whole
`src/main.rs` of a new crate whose dependencies are exactly the README's `cargo add` lines
(holdfast itself as a path dependency on this checkout). A block without `fn main` is items
only and gets an empty `fn main() {}` after it, as a reader would add. Rustdoc's hidden lines
(`# ...`) are refused: a reader would paste them literally.

Each block becomes one binary, `src/bin/line_N.rs` (N: the README line of its opening
fence), of one crate under the target directory, compiled with a single `cargo check`
(`--build`: `cargo build`, which also links). The project's Cargo.lock is copied in, so the
dependencies resolve to the versions the project builds with, and the check shares the
project's target directory: the dependencies `cargo doc` already checked, with the same
features, are reused, so only holdfast and the blocks are compiled. (A full build cannot
reuse the test builds: those enable tokio's dev-only features, which changes every crate
above tokio.) The blocks are also doctests (src/lib.rs includes the README), which compile
and link them. A block that does not compile is reported with its README line and the
compiler's message, and the script exits 1.

    scripts/readme-blocks.py            # what scripts/test.sh runs, after cargo doc
    scripts/readme-blocks.py --build    # build and link each block instead of checking it
    scripts/readme-blocks.py --keep     # also print where the generated crate is
    scripts/readme-blocks.py --self-test   # proves a broken block is caught and named

Options for the self-test: --readme PATH (another markdown file), --crate NAME (another
generated crate).
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def rust_blocks(text):
    """(line of the opening fence, info string, code) for every ```rust block."""
    blocks, current = [], None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if current is None:
            if stripped.startswith("```"):
                info = stripped[3:].strip()
                current = (number, info, [])
        elif stripped == "```":
            start, info, lines = current
            if info.split(",")[0].strip() == "rust":
                blocks.append((start, info, "\n".join(lines) + "\n"))
            current = None
        else:
            current[2].append(line)
    return blocks


def cargo_add_lines(text):
    """The arguments of every `cargo add` line in the README's shell blocks."""
    found, in_sh = [], False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            in_sh = not in_sh and stripped[3:].strip() in ("sh", "bash", "shell", "console")
            continue
        if in_sh:
            command = stripped.split(" #", 1)[0].strip()
            if command.startswith("cargo add "):
                found.append(shlex.split(command)[2:])
    return found


def dependencies(adds):
    """Cargo.toml [dependencies] lines for the `cargo add` lines; holdfast points here."""
    lines, names = [], []
    for args in adds:
        crates, features, i = [], [], 0
        while i < len(args):
            arg = args[i]
            if arg in ("--features", "-F"):
                features += re.split(r"[ ,]+", args[i + 1].strip())
                i += 2
            elif arg.startswith("--features="):
                features += re.split(r"[ ,]+", arg.split("=", 1)[1].strip())
                i += 1
            elif arg in ("--git", "--path", "--branch", "--tag", "--rev", "--rename"):
                i += 2  # where holdfast comes from: this checkout, below
            elif arg.startswith("-"):
                sys.exit(f"README.md: `cargo add` option {arg!r} is not understood by {sys.argv[0]}")
            else:
                crates.append(arg)
                i += 1
        for crate in crates:
            name = crate.split("@", 1)[0]
            version = crate.split("@", 1)[1] if "@" in crate else "*"
            names.append(name)
            feature_list = ", ".join(json.dumps(f) for f in features if f)
            if name == "holdfast":
                lines.append(f'holdfast = {{ path = {json.dumps(str(ROOT))} }}')
            else:
                lines.append(f"{name} = {{ version = {json.dumps(version)}, features = [{feature_list}] }}")
    return names, lines


def option(name, default):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


SELF_TEST_README = """# test

```sh
cargo add holdfast --path ../holdfast
cargo add tokio --features macros,rt-multi-thread
```

Rust RUST_VERSION or later.

```rust
fn fine() -> u32 {
    1
}
```

```rust,no_run
#[tokio::main]
async fn main() {
    let n: u32 = "not a number";
}
```

```rust
#[derive(serde::Deserialize)]
struct NoSerdeDependency;
```
"""


def self_test():
    """A README with a good block and two that do not compile (a type error, a crate the
    `cargo add` lines do not give), then one with a hidden line: each bad one is named."""
    import tempfile

    rust_version = re.search(r'^rust-version\s*=\s*"([^"]+)"', (ROOT / "Cargo.toml").read_text(), re.M).group(1)
    text = SELF_TEST_README.replace("RUST_VERSION", rust_version)
    hidden = text.replace("fn fine() -> u32 {", "# fn hidden() {}\nfn fine() -> u32 {")
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, content, expected, unexpected in [
            ("compile", text, ["README.md line 16:", "README.md:19:", "README.md line 23:"], ["line 10:"]),
            ("hidden", hidden, ["README.md line 11: a rustdoc hidden line"], []),
        ]:
            path = Path(tmp) / f"{name}.md"
            path.write_text(content)
            run = subprocess.run(
                [sys.executable, __file__, "--readme", str(path), "--crate", "readme-blocks-self-test"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            missing = [e for e in expected if e not in run.stdout]
            wrong = [u for u in unexpected if f"README.md {u}" in run.stdout]
            if run.returncode != 1 or missing or wrong:
                failures.append(f"{name}: exit {run.returncode}, missing {missing}, wrongly named {wrong}:\n{run.stdout}")
    if failures:
        print("readme-blocks self-test FAILED\n" + "\n".join(failures))
        return 1
    print("readme-blocks self-test: a type error, a missing dependency and a hidden line are each named by line")
    return 0


def main():
    if "--self-test" in sys.argv:
        return self_test()
    text = Path(option("--readme", README)).read_text()
    problems = []

    rust_version = re.search(r'^rust-version\s*=\s*"([^"]+)"', (ROOT / "Cargo.toml").read_text(), re.M)
    if rust_version and f"Rust {rust_version.group(1)}" not in text:
        problems.append(
            f"README.md does not state the minimum Rust version of Cargo.toml (`Rust {rust_version.group(1)}`)"
        )

    names, deps = dependencies(cargo_add_lines(text))
    if "holdfast" not in names:
        problems.append("README.md has no `cargo add holdfast ...` line")

    blocks = rust_blocks(text)
    if not blocks:
        problems.append("README.md has no ```rust block")
    for start, info, code in blocks:
        for offset, line in enumerate(code.splitlines(), start=1):
            if re.match(r"^\s*#(\s|$)", line):
                problems.append(
                    f"README.md line {start + offset}: a rustdoc hidden line ({line.strip()!r}) in the block "
                    f"at line {start}; a reader would paste it as is"
                )
    if problems:
        print("\n".join(problems))
        return 1

    target_dir = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    if not target_dir.is_absolute():
        target_dir = ROOT / target_dir
    crate = target_dir / option("--crate", "readme-blocks")
    shutil.rmtree(crate / "src", ignore_errors=True)
    (crate / "src" / "bin").mkdir(parents=True)
    manifest = [
        "[package]",
        f'name = "{option("--crate", "readme-blocks")}"',
        'version = "0.0.0"',
        'edition = "2024"',
        "publish = false",
        "",
        "# Not part of any other workspace.",
        "[workspace]",
        "",
        "[dependencies]",
        *deps,
        "",
    ]
    (crate / "Cargo.toml").write_text("\n".join(manifest))
    shutil.copy(ROOT / "Cargo.lock", crate / "Cargo.lock")
    kinds = {}
    for start, info, code in blocks:
        has_main = re.search(r"\bfn\s+main\s*\(", code) is not None
        kinds[start] = "a program with its main" if has_main else "items, beside an empty main"
        (crate / "src" / "bin" / f"line_{start}.rs").write_text(code if has_main else code + "\nfn main() {}\n")

    print(f"README.md: building {len(blocks)} Rust blocks, with dependencies {', '.join(names)}")
    for start, _, _ in blocks:
        print(f"  line {start}: {kinds[start]}")
    env = dict(os.environ, CARGO_TARGET_DIR=str(target_dir))
    env.pop("RUSTFLAGS", None)
    action = "build" if "--build" in sys.argv else "check"
    result = subprocess.run(
        ["cargo", action, "--bins", "--keep-going", "--message-format=json"],
        cwd=crate,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    failed = {}
    for line in result.stdout.splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if message.get("reason") != "compiler-message":
            continue
        name = message.get("target", {}).get("name", "")
        start = int(name[len("line_") :]) if name.startswith("line_") else None
        level = message["message"].get("level")
        rendered = message["message"].get("rendered") or ""
        if start is not None:
            # src/bin/line_N.rs:L:C is README.md line N + L
            rendered = re.sub(
                rf"src/bin/line_{start}\.rs:(\d+):(\d+)",
                lambda m: f"README.md:{start + int(m.group(1))}:{m.group(2)}",
                rendered,
            )
        if level == "error" and start is not None:
            failed.setdefault(start, []).append(rendered)
        elif level in ("error", "warning"):
            sys.stderr.write(rendered)
    if result.returncode == 0:
        print(f"README.md: all {len(blocks)} Rust blocks compile (cargo {action}) as pasted into a new crate")
        if "--keep" in sys.argv:
            print(f"  crate: {crate}")
        return 0

    print()
    if failed:
        for start in sorted(failed):
            print(f"README.md line {start}: this ```rust block does not compile when pasted into src/main.rs:")
            print("".join(failed[start]))
    else:
        print("README.md: the blocks' crate did not build (cargo's output above)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
