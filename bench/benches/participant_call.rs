//! One participant call, as the coordinator makes it for each step:
//! instantiate the compiled component in a fresh store, `declare`, then
//! `execute` on a snapshot, then drop the instance. Also each part alone (`declare` and `execute`
//! each on a fresh instance, as in a transaction: their first touch of the
//! instance's memory is part of their cost).
//!
//! Needs the example components: `cargo build --release --target
//! wasm32-unknown-unknown -p inventory -p payments` (or set `REDSTAGE_COMPONENTS` to their folder).
//! Times `payments-js` too once `examples/payments-js/build.sh` has built
//! the JavaScript payments (`target/js/payments_js.wasm`), on the same
//! sample as `payments`.
//!
//! ```sh
//! cargo bench -p redstage-bench --bench participant_call
//! ```

use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use redstage::runtime::{CallLimits, Component, Runtime};
use redstage_bench::wasm::{Sample, call, inventory_sample, payments_sample};

fn components() -> PathBuf {
    std::env::var_os("REDSTAGE_COMPONENTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/wasm32-unknown-unknown/release")
        })
}

fn load(runtime: &Runtime, name: &str) -> Component {
    let path = components().join(format!("{name}.wasm"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build it with `cargo build --release --target wasm32-unknown-unknown -p inventory -p payments`",
            path.display()
        )
    });
    runtime
        .load(&bytes, CallLimits::default())
        .expect("a valid participant component")
}

fn participant_call(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let runtime = Runtime::new().expect("the wasm runtime");
    for sample in [inventory_sample(), payments_sample()] {
        let component = load(&runtime, sample.participant);
        bench_sample(c, &tokio, &component, &sample);
    }
    // The same payments in JavaScript, once built by its build.sh.
    let js = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/js/payments_js.wasm");
    if let Ok(bytes) = std::fs::read(&js) {
        let component = runtime
            .load(&bytes, CallLimits::default())
            .expect("a valid participant component");
        let sample = Sample {
            participant: "payments-js",
            ..payments_sample()
        };
        bench_sample(c, &tokio, &component, &sample);
    }
}

fn bench_sample(
    c: &mut Criterion,
    tokio: &tokio::runtime::Runtime,
    component: &Component,
    sample: &Sample,
) {
    let mut group = c.benchmark_group(sample.participant);
    group.bench_function("instantiate+declare+execute", |b| {
        b.iter(|| tokio.block_on(call(component, sample)).expect("the call"))
    });
    group.bench_function("instantiate", |b| {
        b.iter(|| tokio.block_on(component.instantiate()).expect("instance"))
    });
    group.bench_function("declare", |b| {
        b.iter_batched(
            || tokio.block_on(component.instantiate()).expect("instance"),
            |mut instance| {
                tokio
                    .block_on(instance.declare(&sample.input))
                    .expect("declare")
            },
            criterion::BatchSize::PerIteration,
        )
    });
    group.bench_function("execute", |b| {
        b.iter_batched(
            || {
                let mut instance = tokio.block_on(component.instantiate()).expect("instance");
                let access = tokio.block_on(instance.declare(&sample.input));
                assert!(matches!(access, Ok(Ok(_))), "the sample declares");
                instance
            },
            |mut instance| {
                tokio
                    .block_on(instance.execute(&sample.input, &sample.snapshot))
                    .expect("execute")
            },
            criterion::BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, participant_call);
criterion_main!(benches);
