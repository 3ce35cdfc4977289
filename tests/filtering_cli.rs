//! The filtering family (au-table1, gu-fig3, gu-fig4, gu-fig16, gu-table1) end to end at smoke
//! scale through the binary: each experiment file selects `kind = "filtering"`, runs on the smoke
//! mini model, writes its tables and figures, and says that its claims were not checked (raw-pixel
//! features cannot test an FID claim).
//!
//! Expected values are diffuq's own contract, not reference numbers: the smoke verdict is
//! "not-checked" with exit 0, the run directory holds the files the READMEs list, class-balanced
//! filtering keeps the same number of samples in every class (by its definition: ⌈frac·N_c⌉ per
//! class), the paper profile validates and its run names the missing weights in one line (exit 2),
//! and an unknown kind is a one-line error naming the file.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{cache_with_data, run_dir, text};

fn diffuq(args: &[&str], cache: &Path, cwd: &Path, experiments: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_diffuq"));
    cmd.current_dir(cwd)
        .arg("--experiments")
        .arg(experiments)
        .args(args)
        .env("XDG_CACHE_HOME", cache);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("DIFFUQ_")) {
        cmd.env_remove(k);
    }
    cmd.output().expect("spawn diffuq")
}

fn experiments() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments")
}

#[test]
fn filtering_family_runs_at_smoke_and_reports_not_checked() {
    let cache = cache_with_data();
    let cwd = tempfile::tempdir().unwrap();
    let (c, w, e) = (cache.path(), cwd.path(), experiments());

    let ls = diffuq(&["ls"], c, w, &e);
    let listed = text(&ls.stdout);
    for a in [
        "au-table1",
        "au-table3",
        "gu-fig3",
        "gu-fig4",
        "gu-fig6",
        "gu-fig16",
        "gu-table1",
        "gu-table4",
        "gu-c7",
        "mini-flow",
    ] {
        assert!(listed.contains(a), "`diffuq ls` lacks {a}: {listed}");
    }

    // Each artifact, with the files its README promises.
    let cases: &[(&str, &[&str])] = &[
        ("au-table1", &[]),
        (
            "gu-fig3",
            &[
                "figures/fid.png",
                "figures/precision.svg",
                "figures/recall.png",
            ],
        ),
        (
            "gu-fig4",
            &[
                "figures/grid-gu-semantic-most.png",
                "figures/grid-gu-semantic-least.png",
                "figures/grid-gu-pixel-most.svg",
            ],
        ),
        ("gu-fig16", &["figures/class-mean.png", "class_means.md"]),
        ("gu-table1", &[]),
        (
            "gu-c7",
            &[
                "figures/grid-gu-semantic-most.png",
                "figures/grid-gu-semantic-least.png",
            ],
        ),
    ];
    for (artifact, extra) in cases {
        let out = diffuq(&["run", artifact, "--scale", "smoke"], c, w, &e);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{artifact}: {}",
            text(&out.stderr)
        );
        let stdout = text(&out.stdout);
        assert!(
            stdout.contains("outcome: not-checked"),
            "{artifact}: {stdout}"
        );
        let dir = w.join(run_dir(&out));
        for f in [
            "table.md",
            "compare.md",
            "table.tex",
            "metrics.parquet",
            "scores.parquet",
            "score_info.parquet",
            "seeds/seed-0/samples.safetensors",
        ]
        .iter()
        .chain(extra.iter())
        {
            assert!(dir.join(f).is_file(), "{artifact}: {f} missing");
        }
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap())
                .unwrap();
        assert_eq!(
            manifest["reproduced"],
            serde_json::Value::Null,
            "{artifact}"
        );
        assert_eq!(manifest["outcome"], "not-checked", "{artifact}");
        let table = std::fs::read_to_string(dir.join("table.md")).unwrap();
        assert!(
            table.contains("Class composition of the kept sets"),
            "{artifact}"
        );
        if *artifact == "gu-table1" {
            assert!(table.contains("realism vs rarity"), "{table}");
        }
    }

    // Class-balanced filtering keeps round(frac · N_c) of every class: with 12 samples whose
    // labels cycle through 10 classes and frac 1/2, one of each of the ten classes but the first
    // two, which keep one of their two.
    let out = diffuq(
        &[
            "run",
            "au-table1",
            "--scale",
            "smoke",
            "filter.class_balanced=true",
            "filter.keep=[0.5, 0.8333333333333334, 1.0]",
            "filter.table_keep=0.5",
        ],
        c,
        w,
        &e,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let au_row = table
        .lines()
        .filter(|l| l.starts_with("| au "))
        .nth(1)
        .unwrap_or_else(|| panic!("no class row for au in {table}"));
    let cells: Vec<&str> = au_row.split('|').map(str::trim).collect();
    // 10 kept of 12 (round(0.5·2) = 1 for the two doubled classes, round(0.5·1) = 1 clamped ≥ 1
    // for the others): every class holds 10 %.
    assert!(
        cells[2..12].iter().all(|c| *c == "10.0%"),
        "class-balanced composition: {au_row}"
    );
}

#[test]
fn an_unknown_checkpoint_name_is_a_config_error_naming_the_known_ones() {
    // Missing paper files are covered for every artifact by tests/paper_scale_cli.rs; here the
    // name after `checkpoint:` must be one the catalog (src/model/catalog.rs) knows.
    let cache = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let (c, w, e) = (cache.path(), cwd.path(), experiments());
    for artifact in ["au-table1", "gu-fig3", "gu-c7"] {
        let v = diffuq(
            &[
                "validate",
                artifact,
                "--scale",
                "paper",
                "model.from=\"checkpoint:adm-imagenet1024\"",
            ],
            c,
            w,
            &e,
        );
        assert_eq!(v.status.code(), Some(2), "{artifact}");
        let err = text(&v.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.contains("model.from")
                && err.contains("adm-imagenet128")
                && err.contains("uvit-imagenet256"),
            "{err}"
        );
    }
}

#[test]
fn unknown_kind_and_bad_score_are_one_line_errors() {
    let cache = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let exp = tempfile::tempdir().unwrap();
    let dir = exp.path().join("my-filter");
    std::fs::create_dir_all(&dir).unwrap();
    let src = std::fs::read_to_string(experiments().join("au-table1/experiment.toml")).unwrap();
    std::fs::write(
        dir.join("experiment.toml"),
        src.replace("kind = \"filtering\"", "kind = \"filtrate\""),
    )
    .unwrap();
    let out = diffuq(
        &["validate", "my-filter", "--scale", "smoke"],
        cache.path(),
        cwd.path(),
        exp.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("my-filter") && err.contains("filtrate") && err.contains("filtering"),
        "{err}"
    );

    let out = diffuq(
        &[
            "validate",
            "au-table1",
            "--scale",
            "smoke",
            "scores=[\"random\", \"au\", \"entropy\"]",
        ],
        cache.path(),
        cwd.path(),
        &experiments(),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("scores") && err.contains("entropy"), "{err}");
}

fn score_column(dir: &Path, name: &str) -> Vec<f64> {
    use polars::prelude::*;
    let f = ParquetReader::new(std::fs::File::open(dir.join("scores.parquet")).unwrap())
        .finish()
        .unwrap();
    f.column(name)
        .unwrap_or_else(|_| panic!("no column {name}"))
        .f64()
        .unwrap()
        .into_no_null_iter()
        .collect()
}

#[test]
fn score_variants_set_their_own_keys_and_fit_their_own_posteriors() {
    // gu-fig6 (M and T′ of the extra samples) and gu-table4 (Laplace hyper-parameters) are score
    // variants `base[key=value,…]`. Expected: diffuq's own contract — a variant's NFE follows its
    // keys (T = 5 steps with `final_step = "stop"`: 4 NFE, plus M·(T′ − 1); GU reuses the MAP
    // sample), its values differ from the base
    // score's (another posterior / another M), the FID-vs-NFE figure exists, and a variant that
    // names a key outside the score tables or a key that does not exist is a one-line error.
    let cache = cache_with_data();
    let cwd = tempfile::tempdir().unwrap();
    let (c, w, e) = (cache.path(), cwd.path(), experiments());
    let out = diffuq(&["run", "gu-fig6", "--scale", "smoke"], c, w, &e);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let dir = w.join(run_dir(&out));
    assert!(dir.join("figures/fid-vs-nfe.png").is_file());
    let nfe = |row: &str| -> u64 {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {row} ")))
            .unwrap_or_else(|| panic!("no row {row} in {stdout}"));
        line.split('|').nth(2).unwrap().trim().parse().unwrap()
    };
    assert_eq!(nfe("gu-semantic"), 4 + 5 * 4);
    assert_eq!(nfe("gu-semantic[gu.m=1]"), 4 + 4);
    assert_eq!(nfe("gu-semantic[gu.sampler.steps=25]"), 4 + 5 * 24);
    assert_ne!(
        score_column(&dir, "gu-semantic"),
        score_column(&dir, "gu-semantic[gu.m=1]")
    );

    let out = diffuq(&["run", "gu-table4", "--scale", "smoke"], c, w, &e);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let dir = w.join(run_dir(&out));
    let base = score_column(&dir, "gu-semantic");
    for v in [
        "gu-semantic[laplace.prior_precision=0.1]",
        "gu-semantic[laplace.sigma=2.0]",
    ] {
        assert_ne!(
            base,
            score_column(&dir, v),
            "{v} used the default posterior"
        );
    }

    for (bad, needle) in [
        ("scores=[\"gu-semantic[sampler.steps=3]\"]", "sampler.steps"),
        ("scores=[\"gu-semantic[gu.mm=3]\"]", "gu.mm"),
        ("scores=[\"gu-semantic[gu.m=0]\"]", "gu.m"),
    ] {
        let out = diffuq(&["validate", "gu-fig6", "--scale", "smoke", bad], c, w, &e);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = text(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{bad}: {err}");
    }
}

#[test]
fn flow_models_need_flow_samplers_and_flow_scores() {
    // gu-c7 runs GU on the flow-matching mini model (GU App. C.7). Expected: diffuq's own contract
    // — a flow model with a diffusion sampler, a diffusion model with a flow sampler, and a score
    // defined through ε and ᾱ_t (AU) on a flow model are one-line errors naming the key (exit 2),
    // before any sampling.
    let cache = cache_with_data();
    let cwd = tempfile::tempdir().unwrap();
    let (c, w, e) = (cache.path(), cwd.path(), experiments());
    for (artifact, kv, key) in [
        ("gu-c7", "sampler.name=ddim", "sampler.name"),
        ("gu-c7", "gu.sampler.name=ddim", "gu.sampler.name"),
        ("gu-c7", "scores=[\"random\",\"au\"]", "scores"),
        ("gu-fig3", "sampler.name=euler", "sampler.name"),
    ] {
        let out = diffuq(&["run", artifact, "--scale", "smoke", kv], c, w, &e);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{artifact} {kv}: {}",
            text(&out.stdout)
        );
        let err = text(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(key), "{artifact} {kv}: {err}");
    }
}
