//! `bitnet`: run BitNet b1.58 models from the command line. Every subcommand is a thin client of
//! the `bitnet` library; nothing here is logic a library user would need.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use bitnet::{ChatMessage, Device, EngineBuilder, GenerateOptions, Prompt, SamplingOptions};
use clap::{Args, Parser, Subcommand, ValueEnum};

mod default_model;
mod perplexity;
mod serve;
mod train;

#[derive(Parser)]
#[command(name = "bitnet", version, about = "Run BitNet b1.58 language models", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, streaming it to stdout.
    Generate(GenerateArgs),
    /// Chat interactively (applies the model's chat template and keeps the history).
    Chat(ChatArgs),
    /// Show a model's architecture, hyper-parameters, tensors, tokenizer and chat template.
    Inspect(InspectArgs),
    /// Print the token ids (and pieces) the engine would feed for a text.
    Tokenize(TokenizeArgs),
    /// Download a model from the Hugging Face hub into the standard cache.
    Pull(PullArgs),
    /// Write a model as GGUF with a chosen ternary encoding and head type, or a synthetic model.
    Convert(ConvertArgs),
    /// Measure prompt processing and generation speed (llama-bench compatible).
    Bench(BenchArgs),
    /// Serve the OpenAI-compatible HTTP API.
    Serve(serve::ServeArgs),
    /// Train a small BitNet b1.58 model (quantization-aware).
    Train(train::TrainArgs),
    /// Perplexity of a model on a text file.
    Perplexity(perplexity::PerplexityArgs),
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// A GGUF file, a Hugging Face model directory, or a hub repo id (owner/name[:file.gguf]);
    /// default: the small Shakespeare model bundled into this binary.
    #[arg(short, long, env = "BITNET_MODEL")]
    model: Option<String>,
    /// Use only the local Hugging Face cache for hub ids; say what is missing.
    #[arg(long)]
    offline: bool,
    /// Hub revision (branch, tag or commit).
    #[arg(long)]
    revision: Option<String>,
}

#[derive(Args, Clone)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Context length (prompt + output); default and maximum: the model's.
    #[arg(long = "ctx", short = 'c')]
    ctx: Option<usize>,
    /// Linear kernel (auto, avx512vnni, avx512vnni-t1 = 1.6-bit weights, avx2, scalar); also
    /// BITNET_KERNEL.
    #[arg(long, default_value = "auto")]
    kernel: String,
    /// Threads (default: physical cores).
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// Copy f16 heads into memory instead of reading them from the mapped file.
    #[arg(long)]
    no_mmap: bool,
    /// CPU: no int8 screen of the head (by default greedy and top-k decoding screen the head
    /// in int8 and compute only the rows that can win exactly: the same tokens from about half
    /// the head's bytes, for `vocab x hidden` bytes of memory).
    #[arg(long)]
    no_head_screen: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

/// Where the model runs.
#[derive(Args, Clone)]
pub(crate) struct DeviceArgs {
    /// Device: auto (a CUDA GPU when present, else the CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Head storage on a GPU: native (as in the file) or int8 (half the bytes of f16).
    #[arg(long, default_value = "native", value_parser = ["native", "int8"])]
    gpu_head: String,
    #[command(flatten)]
    kv: KvArgs,
}

/// How the KV cache stores keys and values.
#[derive(Args, Clone, Debug)]
pub(crate) struct KvArgs {
    /// KV cache storage: f16 (half the memory of f32, logits within a few hundredths of it),
    /// f32 (exact, as the reference computes) or q8 (int8 with one scale per head vector: about
    /// a quarter of f32's memory, logits within about 0.1; the same codes on CPUs and GPUs).
    #[arg(long, default_value = "f16", value_parser = ["f32", "f16", "q8"])]
    kv: String,
}

impl KvArgs {
    /// Applies the KV type to a builder.
    pub(crate) fn apply(&self, b: EngineBuilder) -> Result<EngineBuilder> {
        let kv: bitnet::KvType = self.kv.parse().map_err(anyhow::Error::msg)?;
        Ok(b.kv(kv))
    }
}

impl DeviceArgs {
    /// Applies the device options to a builder; returns the parsed device too.
    fn apply(&self, b: EngineBuilder) -> Result<(EngineBuilder, Device)> {
        let device: Device = self.device.parse().map_err(anyhow::Error::msg)?;
        let head = match self.gpu_head.as_str() {
            "int8" => bitnet::cuda::HeadType::Int8,
            _ => bitnet::cuda::HeadType::Native,
        };
        let b = self.kv.apply(b.device(device).gpu_head(head))?;
        Ok((b, device))
    }
}

impl RunArgs {
    pub(crate) fn load(&self) -> Result<bitnet::Engine> {
        let b = match &self.model.model {
            Some(m) => EngineBuilder::new(m),
            None => EngineBuilder::from_gguf_bytes(default_model::NAME, default_model::GGUF),
        };
        let (b, device) = self.device.apply(b)?;
        let mut b = b
            .kernel(&self.kernel)
            .offline(self.model.offline)
            .progress(true);
        if let Some(r) = &self.model.revision {
            b = b.revision(r);
        }
        if let Some(n) = self.ctx {
            b = b.context_length(n);
        }
        if let Some(n) = self.threads {
            b = b.threads(n);
        }
        b = b.mmap(!self.no_mmap).head_screen(!self.no_head_screen);
        let engine = b.build()?;
        // Say where the model runs whenever we chose (auto), in one line on stderr.
        if device == Device::Auto {
            let info = engine.info();
            match &info.device_note {
                Some(why) => eprintln!("device: cpu (no GPU used: {why})"),
                None => eprintln!("device: {}", info.device),
            }
        }
        Ok(engine)
    }
}

#[derive(Args, Clone)]
struct SamplingArgs {
    /// Most tokens to generate.
    #[arg(short = 'n', long, default_value_t = 128)]
    max_tokens: usize,
    /// Temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Top-k filter (0 = off).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Top-p (nucleus) filter (1 = off).
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Min-p filter (0 = off).
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// Repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Tokens the repetition penalty looks back at.
    #[arg(long, default_value_t = 64)]
    repeat_last_n: usize,
    /// Random seed; the same seed gives the same output.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop before this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Keep generating past end-of-generation tokens.
    #[arg(long)]
    ignore_eos: bool,
}

impl SamplingArgs {
    fn options(&self) -> GenerateOptions {
        GenerateOptions {
            max_tokens: self.max_tokens,
            sampling: SamplingOptions {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                repeat_penalty: self.repeat_penalty,
                repeat_last_n: self.repeat_last_n,
                presence_penalty: 0.0,
                frequency_penalty: 0.0,
                seed: self.seed,
            },
            stop: self.stop.clone(),
            add_bos: None,
            ignore_eos: self.ignore_eos,
            logits: false,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    run: RunArgs,
    /// The prompt text.
    #[arg(
        short,
        long,
        conflicts_with = "prompt_tokens",
        required_unless_present = "prompt_tokens"
    )]
    prompt: Option<String>,
    /// The prompt as comma-separated token ids (no tokenizer needed, no BOS added).
    #[arg(long, value_delimiter = ',')]
    prompt_tokens: Option<Vec<u32>>,
    /// Do not add the BOS token to a text prompt.
    #[arg(long)]
    no_bos: bool,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Output format: streamed text, or one JSON object at the end.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// With --format json: include each generated token's full logit vector.
    #[arg(long)]
    logits: bool,
}

#[derive(Args)]
struct ChatArgs {
    #[command(flatten)]
    run: RunArgs,
    /// A system message to start the conversation with.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

#[derive(Args)]
struct InspectArgs {
    /// A GGUF file, a Hugging Face model directory, or a hub repo id.
    model: String,
    /// Use only the local Hugging Face cache.
    #[arg(long)]
    offline: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

#[derive(Args)]
struct TokenizeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Text to tokenize.
    #[arg(short, long, conflicts_with = "file", required_unless_present = "file")]
    prompt: Option<String>,
    /// Read the text from this file.
    #[arg(short, long)]
    file: Option<std::path::PathBuf>,
    /// Leave out the BOS token.
    #[arg(long)]
    no_bos: bool,
    /// Treat special-token text (e.g. <|eot_id|>) as plain text.
    #[arg(long)]
    no_parse_special: bool,
    /// Output format: one `id -> 'piece'` per line, or JSON.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["model", "synthetic"])))]
struct ConvertArgs {
    /// The model to convert: a GGUF file, a Hugging Face directory or a hub id.
    #[arg(short, long)]
    model: Option<String>,
    /// Instead of converting, write a model of this shape with random ternary weights
    /// (2b4t = microsoft/bitnet-b1.58-2B-4T's exact shape; 700m, 125m, tiny).
    #[arg(long)]
    synthetic: Option<String>,
    /// Seed of the synthetic weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Give the synthetic model this model's tokenizer (so text prompts and the server work).
    #[arg(long, requires = "synthetic")]
    vocab_from: Option<String>,
    /// The GGUF file to write.
    #[arg(short, long)]
    out: std::path::PathBuf,
    /// Ternary encoding: i2_s (bitnet.cpp), tq2_0, tq1_0 (llama.cpp), f16.
    #[arg(long, default_value = "i2_s")]
    weights: String,
    /// Head type (for tied models, the shared embedding's): f16, q8_0, q6_k, q4_k, q4_0, f32.
    #[arg(long, default_value = "f16")]
    head: String,
    /// Embedding type when the head is separate.
    #[arg(long, default_value = "f16")]
    embedding: String,
    /// Use only the local Hugging Face cache for hub ids.
    #[arg(long)]
    offline: bool,
}

#[derive(Args)]
struct BenchArgs {
    /// The model (GGUF file, Hugging Face directory or hub id).
    #[arg(short = 'm', long)]
    model: String,
    /// Prompt lengths to test (pp), comma-separated; 0 skips.
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_delimiter = ',',
        default_value = "512"
    )]
    n_prompt: Vec<usize>,
    /// Generation lengths to test (tg), comma-separated; 0 skips.
    #[arg(
        short = 'n',
        long = "n-gen",
        value_delimiter = ',',
        default_value = "128"
    )]
    n_gen: Vec<usize>,
    /// Thread counts to test, comma-separated (default: physical cores).
    #[arg(short = 't', long, value_delimiter = ',')]
    threads: Vec<usize>,
    /// Timed repetitions per test (after one warm-up run).
    #[arg(short = 'r', long, default_value_t = 5)]
    repetitions: usize,
    /// Output: md (llama-bench's table) or json.
    #[arg(short = 'o', long, default_value = "md")]
    output: String,
    /// Linear kernel (auto, avx512vnni, avx512vnni-t1 = 1.6-bit weights, avx2, scalar).
    #[arg(long, default_value = "auto")]
    kernel: String,
    /// Copy f16 heads into memory instead of reading them from the mapped file.
    #[arg(long)]
    no_mmap: bool,
    /// CPU: no int8 screen of the head (decode then reads the whole float head every token).
    #[arg(long)]
    no_head_screen: bool,
    #[command(flatten)]
    device: DeviceArgs,
    /// Also measure aggregate decode with this many concurrent sequences (comma-separated),
    /// each filled to --depth positions first.
    #[arg(short = 'b', long = "batch", value_delimiter = ',')]
    batch: Vec<usize>,
    /// Context depth of the sequences in the --batch tests.
    #[arg(long, default_value_t = 512)]
    depth: usize,
}

#[derive(Args)]
struct PullArgs {
    /// The hub repo id (owner/name[:file.gguf]).
    repo: String,
    /// Hub revision (branch, tag or commit).
    #[arg(long)]
    revision: Option<String>,
    /// Only check the local cache and say what is missing.
    #[arg(long)]
    offline: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("BITNET_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => generate(a),
        Command::Chat(a) => chat(a),
        Command::Inspect(a) => inspect(a),
        Command::Tokenize(a) => tokenize(a),
        Command::Pull(a) => pull(a),
        Command::Convert(a) => convert(a),
        Command::Bench(a) => bench(a),
        Command::Serve(a) => serve::run(a),
        Command::Train(a) => train::run(a),
        Command::Perplexity(a) => perplexity::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, leaving out causes the message already quotes.
fn error_chain(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}

fn generate(a: GenerateArgs) -> Result<()> {
    let engine = a.run.load()?;
    let mut opts = a.sampling.options();
    opts.logits = a.logits;
    if a.no_bos {
        opts.add_bos = Some(false);
    }
    if a.logits && a.format != Format::Json {
        bail!("--logits needs --format json");
    }
    let prompt = match (a.prompt, a.prompt_tokens) {
        (_, Some(ids)) => Prompt::Tokens(ids),
        (Some(text), None) => Prompt::Text(text),
        (None, None) => bail!("give --prompt or --prompt-tokens"),
    };
    let mut generation = engine.generate(prompt, opts)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut ids = Vec::new();
    let mut text = String::new();
    let mut logits = Vec::new();
    for token in generation.by_ref() {
        let token = token?;
        ids.push(token.id);
        if a.format == Format::Text {
            out.write_all(token.text.as_bytes())?;
            out.flush()?;
        }
        text.push_str(&token.text);
        if let Some(l) = token.logits {
            logits.push(l);
        }
    }
    let tail = generation.take_tail();
    text.push_str(&tail);
    let finish = generation
        .finish_reason()
        .map(|f| f.openai())
        .unwrap_or("stop");
    if a.format == Format::Json {
        let mut obj = serde_json::json!({
            "tokens": ids,
            "text": text,
            "prompt_tokens": generation.prompt_tokens(),
            "finish_reason": finish,
        });
        if a.logits {
            obj["logits"] = serde_json::json!(logits);
        }
        serde_json::to_writer(&mut out, &obj)?;
        writeln!(out)?;
    } else {
        out.write_all(tail.as_bytes())?;
        writeln!(out)?;
        if generation.finish_reason() == Some(bitnet::FinishReason::ContextFull) {
            eprintln!(
                "note: stopped because the context ({} tokens) is full",
                engine.context_length()
            );
        }
    }
    Ok(())
}

fn chat(a: ChatArgs) -> Result<()> {
    let engine = a.run.load()?;
    let mut history = Vec::new();
    let mut prefix = None;
    if let Some(s) = a.system {
        history.push(ChatMessage::new("system", s));
    }
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    eprintln!(
        "chatting with {} (empty line or Ctrl-D to quit)",
        engine.info().path.display()
    );
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        history.push(ChatMessage::new("user", line.trim_end()));
        // Each turn goes on from the last one's cache: only the new message is prefilled.
        let prompt = Prompt::Chat(history.clone());
        let mut generation = match prefix.take() {
            Some(p) => engine.generate_after(prompt, a.sampling.options(), p)?,
            None => engine.generate(prompt, a.sampling.options())?,
        };
        let mut reply = String::new();
        for token in generation.by_ref() {
            let token = token?;
            out.write_all(token.text.as_bytes())?;
            out.flush()?;
            reply.push_str(&token.text);
        }
        let tail = generation.take_tail();
        reply.push_str(&tail);
        writeln!(out, "{tail}")?;
        history.push(ChatMessage::new("assistant", reply.trim()));
        prefix = Some(generation.into_prefix());
    }
    Ok(())
}

fn inspect(a: InspectArgs) -> Result<()> {
    let report = bitnet::inspect(&a.model, a.offline)?;
    let mut out = std::io::stdout().lock();
    if a.format == Format::Json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "path:         {}", report.path)?;
    writeln!(out, "format:       {}", report.format)?;
    writeln!(
        out,
        "architecture: {}",
        report.architecture.as_deref().unwrap_or("(none)")
    )?;
    match (&report.config, &report.config_error) {
        (Some(c), _) => {
            writeln!(out, "hyper-parameters:")?;
            if let Some(map) = c.as_object() {
                for (k, v) in map {
                    writeln!(out, "  {k:<18} {v}")?;
                }
            }
        }
        (None, Some(e)) => writeln!(out, "hyper-parameters: cannot run this file: {e}")?,
        (None, None) => {}
    }
    if !report.metadata.is_empty() {
        writeln!(out, "metadata ({}):", report.metadata.len())?;
        for (k, v) in &report.metadata {
            writeln!(out, "  {k} = {v}")?;
        }
    }
    let total: u64 = report.tensors.iter().filter_map(|t| t.bytes).sum();
    writeln!(
        out,
        "tensors ({}, {:.2} MB):",
        report.tensors.len(),
        total as f64 / 1e6
    )?;
    for t in &report.tensors {
        let bytes = t.bytes.map(|b| b.to_string()).unwrap_or_else(|| "?".into());
        writeln!(
            out,
            "  {:<40} {:<10} {:<20} {bytes}",
            t.name,
            t.dtype,
            format!("{:?}", t.shape)
        )?;
    }
    match &report.tokenizer {
        Some(t) => writeln!(out, "tokenizer:    {t}")?,
        None => writeln!(out, "tokenizer:    (none)")?,
    }
    match &report.chat_template {
        Some(t) => writeln!(out, "chat template:\n{t}")?,
        None => writeln!(out, "chat template: (none)")?,
    }
    Ok(())
}

fn tokenize(a: TokenizeArgs) -> Result<()> {
    let (owned, bundled);
    let tok = match &a.model.model {
        Some(m) => {
            owned = bitnet::load_tokenizer(m, a.model.offline)?;
            &owned
        }
        None => {
            bundled =
                EngineBuilder::from_gguf_bytes(default_model::NAME, default_model::GGUF).build()?;
            bundled
                .tokenizer()
                .context("the bundled model has no tokenizer")?
        }
    };
    let text = match (a.prompt, a.file) {
        (Some(p), _) => p,
        (None, Some(f)) => {
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?
        }
        (None, None) => bail!("give --prompt or --file"),
    };
    let add_bos = !a.no_bos && tok.add_bos_default();
    let ids = tok.encode(&text, add_bos, !a.no_parse_special)?;
    // Pieces as text (byte-level tokens decoded; a piece that ends inside a UTF-8 character shows
    // U+FFFD), like llama-tokenize.
    let pieces: Vec<String> = ids
        .iter()
        .map(|&i| String::from_utf8_lossy(&tok.token_bytes(i).unwrap_or_default()).into_owned())
        .collect();
    let mut out = std::io::stdout().lock();
    if a.format == Format::Json {
        serde_json::to_writer(
            &mut out,
            &serde_json::json!({ "ids": ids, "pieces": pieces }),
        )?;
        writeln!(out)?;
    } else {
        for (id, p) in ids.iter().zip(&pieces) {
            writeln!(out, "{id:>6} -> '{p}'")?;
        }
    }
    Ok(())
}

fn pull(a: PullArgs) -> Result<()> {
    let mut b = EngineBuilder::new(&a.repo)
        .offline(a.offline)
        .progress(true);
    if let Some(r) = a.revision {
        b = b.revision(r);
    }
    let path = b.resolve()?;
    println!("{}", path.display());
    Ok(())
}

fn convert(a: ConvertArgs) -> Result<()> {
    let opts = bitnet::convert::ConvertOptions {
        weights: a.weights.parse().map_err(anyhow::Error::msg)?,
        head: a.head.parse().map_err(anyhow::Error::msg)?,
        embedding: a.embedding.parse().map_err(anyhow::Error::msg)?,
    };
    let report = match (&a.model, &a.synthetic) {
        (_, Some(preset)) => {
            bitnet::convert::synthetic(preset, a.seed, &a.out, &opts, a.vocab_from.as_deref())?
        }
        (Some(model), None) => bitnet::convert::convert(model, &a.out, &opts, a.offline)?,
        (None, None) => bail!("give --model or --synthetic"),
    };
    eprintln!(
        "wrote {} ({} tensors, {:.1} MB: ternary {:.1} MB, head {:.1} MB)",
        a.out.display(),
        report.tensors,
        report.bytes as f64 / 1e6,
        report.ternary_bytes as f64 / 1e6,
        report.head_bytes as f64 / 1e6
    );
    Ok(())
}

fn bench(a: BenchArgs) -> Result<()> {
    if !["md", "json"].contains(&a.output.as_str()) {
        bail!("unknown output '{}' (md, json)", a.output);
    }
    if a.repetitions == 0 {
        bail!("--repetitions must be at least 1");
    }
    let threads = if a.threads.is_empty() {
        vec![bitnet::default_threads()]
    } else {
        a.threads.clone()
    };
    let mut rows = Vec::new();
    let mut out = std::io::stdout().lock();
    let mut header_done = false;
    for &t in &threads {
        let (b, _) = a.device.apply(EngineBuilder::new(&a.model))?;
        let engine = b
            .kernel(&a.kernel)
            .threads(t)
            .mmap(!a.no_mmap)
            .head_screen(!a.no_head_screen)
            .progress(true)
            .build()?;
        let backend = if engine.model().device().is_some() {
            "CUDA"
        } else {
            "CPU"
        };
        let c = engine.model().config().clone();
        let file_bytes = std::fs::metadata(&engine.info().path)
            .map(|m| m.len())
            .unwrap_or(0);
        let params = c.vocab_size * c.hidden_size * if c.tied_embeddings { 1 } else { 2 }
            + c.n_layers
                * (c.hidden_size * (c.q_dim() + 2 * c.kv_dim())
                    + c.q_dim() * c.hidden_size
                    + 3 * c.hidden_size * c.intermediate_size);
        let model_desc = format!(
            "{} {} {}",
            c.architecture,
            engine.info().kernel,
            engine.model().head_type()
        );
        let mut results = Vec::new();
        for &p in a.n_prompt.iter().filter(|&&p| p > 0) {
            results.push(bitnet::bench::bench_pp(&engine, p, a.repetitions)?);
        }
        for &n in a.n_gen.iter().filter(|&&n| n > 0) {
            results.push(bitnet::bench::bench_tg(&engine, n, a.repetitions)?);
            for &b in &a.batch {
                results.push(bitnet::bench::bench_batch(
                    &engine,
                    b,
                    a.depth,
                    n,
                    a.repetitions,
                )?);
            }
        }
        let rss = bitnet::bench::peak_rss_bytes().unwrap_or(0);
        for r in results {
            if a.output == "md" {
                if !header_done {
                    writeln!(
                        out,
                        "| model | size | params | backend | threads | test | t/s | GB/s | B/token | peak RSS |"
                    )?;
                    writeln!(
                        out,
                        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
                    )?;
                    header_done = true;
                }
                let bw = if r.bytes_per_token > 0 {
                    (
                        format!("{:.1}", r.gb_per_s),
                        format!(
                            "{:.1} MB",
                            (r.bytes_per_token + r.kv_bytes_per_token) as f64 / 1e6
                        ),
                    )
                } else {
                    ("-".into(), "-".into())
                };
                writeln!(
                    out,
                    "| {model_desc} | {:.2} GiB | {:.2} B | {backend} | {t} | {} | {:.2} ± {:.2} | {} | {} | {:.0} MiB |",
                    file_bytes as f64 / (1u64 << 30) as f64,
                    params as f64 / 1e9,
                    r.test,
                    r.avg_ts,
                    r.stddev_ts,
                    bw.0,
                    bw.1,
                    rss as f64 / (1u64 << 20) as f64,
                )?;
                out.flush()?;
            }
            rows.push(serde_json::json!({
                "model_filename": engine.info().path.display().to_string(),
                "model_type": model_desc,
                "model_size": file_bytes,
                "model_n_params": params,
                "kernel": engine.info().kernel,
                "device": engine.info().device,
                "head_type": engine.model().head_type(),
                "type_k": engine.model().kv_type().name(),
                "type_v": engine.model().kv_type().name(),
                "n_threads": t,
                "n_prompt": if r.test.starts_with("pp") { r.n_tokens } else { 0 },
                "n_gen": if r.test.starts_with("tg") { r.n_tokens } else { 0 },
                "test": r.test,
                "avg_ts": r.avg_ts,
                "stddev_ts": r.stddev_ts,
                "samples_ts": r.samples_ts,
                "bytes_per_token": r.bytes_per_token,
                "kv_bytes_per_token": r.kv_bytes_per_token,
                "gb_per_s": r.gb_per_s,
                "peak_rss_bytes": rss,
            }));
        }
    }
    if a.output == "json" {
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
    }
    Ok(())
}
