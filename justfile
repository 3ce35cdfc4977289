# diffuq tasks. `just --list` shows them. The build cache lives outside the clone so that every
# checkout on one machine (and every CI run) reuses it.

set shell := ["bash", "-euo", "pipefail", "-c"]

export CARGO_TARGET_DIR := env_var_or_default("CARGO_TARGET_DIR", home_directory() / ".cache" / "diffuq-target")
export CARGO_TERM_COLOR := env_var_or_default("CARGO_TERM_COLOR", "auto")

# The default artifact at mini scale (no downloads needed).
default: demo

# Run the default artifact: gu-fig2 at mini scale.
demo: (gu-fig2 "mini")

# The whole test suite: formatting, lints, then every unit, integration, property and snapshot test.
test:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets --locked -- -D warnings
    cargo test --workspace --all-targets --locked

# GU Fig. 2, toy 25-mode ensemble: `just gu-fig2 smoke`, `just gu-fig2 mini train.steps=500`.
gu-fig2 scale="mini" *overrides:
    cargo run --quiet --locked -- run gu-fig2 --scale {{scale}} {{overrides}}

# AU Fig. 3, step-wise uncertainty on the analytic denoiser: `just au-fig3 smoke`, `just au-fig3 mini au.m=20`.
au-fig3 scale="mini" *overrides:
    cargo run --quiet --locked -- run au-fig3 --scale {{scale}} {{overrides}}

# The mini image model (trained or taken from models/ / the model cache), its samples and FID vs the
# real-data floor: `just mini-model`, `just mini-model smoke`.
mini-model scale="mini" *overrides:
    cargo run --quiet --locked -- run mini-model --scale {{scale}} {{overrides}}

# The filtering family (experiment kind "filtering", docs/filtering.md): score N samples of the mini
# model, keep the lowest K, FID/precision/recall of the kept set. `just au-table1 smoke`,
# `just gu-fig3 mini filter.class_balanced=true`.
au-table1 scale="mini" *overrides:
    cargo run --quiet --locked -- run au-table1 --scale {{scale}} {{overrides}}

gu-fig3 scale="mini" *overrides:
    cargo run --quiet --locked -- run gu-fig3 --scale {{scale}} {{overrides}}

gu-fig4 scale="mini" *overrides:
    cargo run --quiet --locked -- run gu-fig4 --scale {{scale}} {{overrides}}

gu-fig16 scale="mini" *overrides:
    cargo run --quiet --locked -- run gu-fig16 --scale {{scale}} {{overrides}}

gu-table1 scale="mini" *overrides:
    cargo run --quiet --locked -- run gu-table1 --scale {{scale}} {{overrides}}

# GU's ablations, as score variants of the filtering kind: `just gu-fig6` (M and T′ of the extra
# samples vs NFE), `just gu-table4` (Laplace prior precision and observation noise).
gu-fig6 scale="mini" *overrides:
    cargo run --quiet --locked -- run gu-fig6 --scale {{scale}} {{overrides}}

gu-table4 scale="mini" *overrides:
    cargo run --quiet --locked -- run gu-table4 --scale {{scale}} {{overrides}}

# GU App. C.7: GU filtering of the flow-matching mini model (experiments/mini-flow, dopri5).
gu-c7 scale="mini" *overrides:
    cargo run --quiet --locked -- run gu-c7 --scale {{scale}} {{overrides}}

# The flow-matching mini model (velocity UNet2D), its samples and FID: `just mini-flow`.
mini-flow scale="mini" *overrides:
    cargo run --quiet --locked -- run mini-flow --scale {{scale}} {{overrides}}

# AU Table 2 (kind "reconstruction": test images noised to T/2 and reconstructed, AUSE/AURG of the
# summed pixel uncertainty): `just au-table2`, `just au-table2 mini metric.error_scale=au-release`.
au-table2 scale="mini" *overrides:
    cargo run --quiet --locked -- run au-table2 --scale {{scale}} {{overrides}}

# AU Table 3 (uncertainty-guided sampling, Alg. 2: FID with and without guidance from the same x_T):
# `just au-table3`, `just au-table3 mini guidance.threshold=per-image`.
au-table3 scale="mini" *overrides:
    cargo run --quiet --locked -- run au-table3 --scale {{scale}} {{overrides}}

# Train (or find) the image models an artifact uses, ahead of its run: `just train mini-model`.
train artifact scale="mini" *overrides:
    cargo run --quiet --locked -- train {{artifact}} --scale {{scale}} {{overrides}}

# Resolve and check an artifact's configuration without computing.
validate artifact scale="mini" *overrides:
    cargo run --quiet --locked -- validate {{artifact}} --scale {{scale}} {{overrides}}

# Criterion benchmarks (speed targets live here, not in timed tests). Built with the dev profile,
# whose numeric crates are opt-level 3: a release build of the whole stack takes ~23 min here.
bench:
    cargo bench --locked --profile dev --bench gu_fig2 --bench au_overhead --bench metrics --bench images
