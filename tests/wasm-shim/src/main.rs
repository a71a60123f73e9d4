//! `containerd-shim-wasmtime-v1`: a containerd shim that runs WASI programs with wasmtime, built on
//! runwasi's `containerd-shim-wasm` library. kwasm-agent's end-to-end tests install it like any shim
//! release and run WebAssembly pods through it. Non-WebAssembly containers (a pod's pause container)
//! are run natively by the library.

use anyhow::{Context, Result};
use containerd_shim_wasm::sandbox::context::{Entrypoint, RuntimeContext, WasmBinaryType};
use containerd_shim_wasm::sandbox::Sandbox;
use containerd_shim_wasm::shim::{Cli, Shim, Version};
use wasmtime::component::{Component, ResourceTable};
use wasmtime::{Engine, Linker, Module, Store};
use wasmtime_wasi::p2::bindings::Command;
use wasmtime_wasi::preview1::WasiP1Ctx;
use wasmtime_wasi::{DirPerms, FilePerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

struct WasmtimeShim;

impl Shim for WasmtimeShim {
    fn name() -> &'static str {
        "wasmtime"
    }

    // Not the library's version!() macro: it embeds the git revision, so every commit would rebuild
    // the shim and change the archive's digest.
    fn version() -> Version {
        Version {
            version: env!("CARGO_PKG_VERSION"),
            revision: "<none>",
        }
    }

    type Sandbox = WasmtimeSandbox;
}

struct WasmtimeSandbox {
    engine: Engine,
}

impl Default for WasmtimeSandbox {
    fn default() -> Self {
        let mut config = wasmtime::Config::new();
        // The library drives the sandbox from its own tokio runtime: wasmtime must be used through
        // its async API there (the blocking one would start a runtime inside a runtime and panic).
        config.async_support(true);
        config.wasm_component_model(true);
        let engine = Engine::new(&config).expect("a wasmtime engine with the default settings");
        Self { engine }
    }
}

impl Sandbox for WasmtimeSandbox {
    async fn run_wasi(&self, ctx: &impl RuntimeContext) -> Result<i32> {
        let Entrypoint { source, func, .. } = ctx.entrypoint();
        let bytes = source.as_bytes()?;
        let outcome = match WasmBinaryType::from_bytes(&bytes) {
            Some(WasmBinaryType::Module) => self.run_module(ctx, &bytes, &func).await,
            Some(WasmBinaryType::Component) => self.run_component(ctx, &bytes).await,
            None => anyhow::bail!("the entrypoint is neither a WebAssembly module nor a component"),
        };
        exit_code(outcome)
    }
}

impl WasmtimeSandbox {
    /// A WASI preview 1 module: call its start function (`_start` unless the entrypoint names one).
    async fn run_module(&self, ctx: &impl RuntimeContext, bytes: &[u8], func: &str) -> Result<()> {
        let module = Module::from_binary(&self.engine, bytes).context("compiling the module")?;
        let mut linker: Linker<WasiP1Ctx> = Linker::new(&self.engine);
        wasmtime_wasi::preview1::add_to_linker_async(&mut linker, |cx| cx)?;
        let mut store = Store::new(&self.engine, wasi_context(ctx)?.build_p1());
        let instance = linker.instantiate_async(&mut store, &module).await?;
        let start = instance
            .get_func(&mut store, func)
            .with_context(|| format!("the module exports no function {func:?}"))?;
        start.call_async(&mut store, &[], &mut []).await
    }

    /// A WASI preview 2 command component: call `wasi:cli/run`.
    async fn run_component(&self, ctx: &impl RuntimeContext, bytes: &[u8]) -> Result<()> {
        let component =
            Component::from_binary(&self.engine, bytes).context("compiling the component")?;
        let mut linker = wasmtime::component::Linker::new(&self.engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        let state = ComponentState {
            ctx: wasi_context(ctx)?.build(),
            table: ResourceTable::new(),
        };
        let mut store = Store::new(&self.engine, state);
        let command = Command::instantiate_async(&mut store, &component, &linker).await?;
        command
            .wasi_cli_run()
            .call_run(&mut store)
            .await?
            .map_err(|()| anyhow::anyhow!("the component's wasi:cli/run returned an error"))
    }
}

struct ComponentState {
    ctx: WasiCtx,
    table: ResourceTable,
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// The container's process as WASI sees it: its arguments and environment, the container's stdio, and
/// its root filesystem (mounted volumes included) as the preopened `/`.
fn wasi_context(ctx: &impl RuntimeContext) -> Result<WasiCtxBuilder> {
    let mut builder = WasiCtxBuilder::new();
    builder.args(ctx.args()).inherit_stdio();
    for var in ctx.envs() {
        let (key, value) = var.split_once('=').unwrap_or((var.as_str(), ""));
        builder.env(key, value);
    }
    builder.preopened_dir("/", "/", DirPerms::all(), FilePerms::all())?;
    Ok(builder)
}

/// `proc_exit(n)` unwinds as an `I32Exit` error: that is the program's exit code, not a failure.
fn exit_code(outcome: Result<()>) -> Result<i32> {
    match outcome {
        Ok(()) => Ok(0),
        Err(e) => match e.downcast_ref::<I32Exit>() {
            Some(exit) => Ok(exit.0),
            None => Err(e),
        },
    }
}

fn main() {
    WasmtimeShim::run(None);
}
