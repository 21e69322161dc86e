//! `bitnet serve`: the OpenAI-compatible HTTP API over the continuous-batching engine. Parses
//! options and hands over to `bitnet_server::run`; all server logic lives in that crate.

use std::time::Duration;

use anyhow::{Result, bail};
use bitnet_server::{Scheduler, SchedulerConfig, ServerConfig};
use clap::Args;

/// Options of `bitnet serve`.
#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    run: crate::RunArgs,
    /// Address to listen on (loopback unless told otherwise).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer <KEY>` on every route but /health.
    #[arg(long, env = "BITNET_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Most sequences decoded together in one batched step [default: 8 on the CPU; on a GPU as
    /// many full contexts as 80% of its free memory holds, at most 256].
    #[arg(long)]
    max_batch: Option<usize>,
    /// Most requests waiting for a slot; past it, requests get 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// KV cache budget of all running sequences in MiB (default: max-batch full contexts).
    #[arg(long)]
    kv_budget_mb: Option<usize>,
    /// Prompt tokens prefilled per engine step (long prompts are read in chunks of this size so
    /// running streams keep flowing).
    #[arg(long, default_value_t = 256)]
    prefill_chunk: usize,
    /// Finished requests' KV caches kept, so that a request starting with the same tokens (a
    /// chat's next turn) prefills only what is new; they live within --kv-budget-mb and give
    /// way to running requests. 0 turns it off [default: 4 on the CPU; on a GPU the max batch].
    #[arg(long)]
    prompt_cache: Option<usize>,
    /// Largest accepted request body, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Seconds a client may take to send its request (headers, then body).
    #[arg(long, default_value_t = 30)]
    client_timeout: u64,
    /// Seconds a client may leave its response unread (its window full) before the connection is
    /// cut and its request cancelled; a slow model never trips it.
    #[arg(long, default_value_t = 30)]
    write_timeout: u64,
    /// Seconds running requests get to finish on SIGINT/SIGTERM before they are cancelled.
    #[arg(long, default_value_t = 10)]
    shutdown_grace: u64,
    /// The model id reported by /v1/models (default: the model file's name).
    #[arg(long)]
    model_name: Option<String>,
}

/// Runs the server until SIGINT/SIGTERM; exits 0 after a graceful shutdown.
pub fn run(a: ServeArgs) -> Result<()> {
    if a.max_batch == Some(0) {
        bail!("--max-batch must be at least 1");
    }
    let model_name = a.model_name.clone().unwrap_or_else(|| {
        let m = a
            .run
            .model
            .model
            .as_deref()
            .unwrap_or(crate::default_model::NAME);
        std::path::Path::new(m)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| m.to_string())
    });
    let config = ServerConfig {
        api_key: a.api_key.clone(),
        model_name,
        max_body_bytes: a.max_body_bytes,
        header_timeout: Duration::from_secs(a.client_timeout.max(1)),
        body_timeout: Duration::from_secs(a.client_timeout.max(1)),
        write_timeout: Duration::from_secs(a.write_timeout.max(1)),
        shutdown_grace: Duration::from_secs(a.shutdown_grace),
    };
    let run = a.run.clone();
    let (max_batch, queue, kv_mb, chunk) = (a.max_batch, a.queue, a.kv_budget_mb, a.prefill_chunk);
    let prompt_cache = a.prompt_cache;
    let load = move || -> Result<Scheduler, String> {
        let engine = run.load().map_err(|e| format!("{e:#}"))?;
        let defaults = SchedulerConfig::for_engine(&engine);
        let chosen = match (max_batch, engine.model().device_memory()) {
            (None, Some((free, _))) => format!(
                " for the device's {:.1} GiB of free memory; --max-batch sets it",
                free as f64 / (1u64 << 30) as f64
            ),
            _ => String::new(),
        };
        let max_batch = max_batch.unwrap_or(defaults.max_batch);
        // The KV budget and (on a GPU) the prompt cache follow the chosen batch unless given.
        let mut cfg = SchedulerConfig::for_batch(&engine, max_batch);
        cfg.max_queue = queue;
        cfg.prefill_chunk = chunk.max(1);
        if let Some(n) = prompt_cache {
            cfg.prompt_cache = n;
        }
        if let Some(mb) = kv_mb {
            cfg.kv_budget_bytes = mb.saturating_mul(1 << 20);
        }
        let ctx = engine.context_length();
        let sched = Scheduler::start(engine, cfg).map_err(|e| e.to_string())?;
        eprintln!("model loaded (context {ctx} tokens, max batch {max_batch}{chosen}); ready");
        Ok(sched)
    };
    let addr = if a.host.contains(':') && !a.host.starts_with('[') {
        format!("[{}]:{}", a.host, a.port)
    } else {
        format!("{}:{}", a.host, a.port)
    };
    bitnet_server::run(
        &addr,
        config,
        |local| eprintln!("listening on http://{local}"),
        load,
    )?;
    eprintln!("shut down");
    Ok(())
}
