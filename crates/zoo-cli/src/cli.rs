//! The command line, built from the task registry so that each task's inputs, options and
//! examples appear under `zoo run <task> --help` without the CLI knowing any task.

use clap::{Arg, ArgAction, Command};
use zoo_runtime::{explain, Explains, Registry, Task, TaskOption};

const ABOUT: &str = "Run pretrained neural networks on your own machine, offline once the weights are cached.";

const AFTER_HELP: &str = "\
Examples:
  zoo list                                   tasks, their models, what is downloaded
  zoo run image-classification photo.jpg     classify with the bundled default model
  zoo run image-classification photos/ --json > labels.jsonl
  zoo download image-classification          fetch a task's models for offline use
  zoo info efficientnet-lite0                a model's source, licence, files and quality

Models are named by catalogue id (see `zoo list`), by Hugging Face Hub id with an optional
revision (owner/name@revision), or by a local folder (./my-model).

Environment:
  HF_HUB_CACHE, HF_HOME   where downloaded models live (default ~/.cache/huggingface/hub,
                          shared with Python's huggingface_hub)
  HF_ENDPOINT             the Hub to download from (default https://huggingface.co)
  HF_HUB_OFFLINE=1        never touch the network (same as --offline)
  HF_TOKEN                token for private or gated repositories

Exit status: 0 success, 1 a run or download failed (for any input), 2 usage error.";

fn offline_arg() -> Arg {
    Arg::new("offline")
        .long("offline")
        .action(ArgAction::SetTrue)
        .global(true)
        .help("Never touch the network; use only cached and bundled models (also HF_HUB_OFFLINE=1)")
}

fn json_arg(help: &'static str) -> Arg {
    Arg::new("json").long("json").action(ArgAction::SetTrue).help(help)
}

pub fn command(registry: &Registry) -> Command {
    let mut run = Command::new("run")
        .about("Run a task's model on inputs")
        .long_about("Run a task's model on inputs. Each task has its own options: `zoo run <task> --help`.")
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand_value_name("TASK")
        .subcommand_help_heading("Tasks");
    for task in registry.tasks() {
        run = run.subcommand(run_task_command(task));
    }
    Command::new("zoo")
        .version(env!("CARGO_PKG_VERSION"))
        .about(ABOUT)
        .after_help(AFTER_HELP)
        .subcommand_required(true)
        .arg_required_else_help(true)
        .arg(offline_arg())
        .subcommand(
            Command::new("list")
                .about("List tasks and their models, marking defaults and what is available offline")
                .arg(json_arg("Print one JSON object per model")),
        )
        .subcommand(
            Command::new("download")
                .about("Download models into the Hugging Face cache for offline use")
                .long_about(
                    "Download models into the Hugging Face cache for offline use. Name tasks (all their \
                     catalogue models), catalogue ids, or Hub ids. Files already cached are checked against \
                     the catalogue's sha256 and fetched again if damaged; interrupted downloads resume.",
                )
                .arg(Arg::new("models").value_name("TASK|MODEL").num_args(1..).required(true))
                .arg(json_arg("Print one JSON object per model"))
                .after_help(
                    "Examples:\n  zoo download image-classification\n  zoo download timm/tf_efficientnet_lite0.in1k",
                ),
        )
        .subcommand(
            Command::new("info")
                .about("Show a model's source, licence, quality and files")
                .arg(Arg::new("model").value_name("MODEL").required(true))
                .arg(json_arg("Print the information as one JSON object")),
        )
        .subcommand(run)
        .subcommand(train_command(registry))
        .subcommand(serve_command())
}

const SERVE_AFTER_HELP: &str = "\
Routes:
  POST /v1/run/{task}              multipart 'file' fields, or JSON {\"inputs\": [...], \"options\": {...}};
                                   answers {\"results\": [...]}, each what `zoo run TASK --json` prints
  GET  /v1/tasks, /v1/models       what is served (as `zoo list --json`)
  POST /v1/audio/transcriptions    OpenAI's audio API (also /v1/audio/translations); model whisper-1
                                   means the served speech model
  /v2/...                          the Open Inference Protocol (KServe, Triton's tritonclient)
  GET  /health, /v2/health/live, /v2/health/ready, /metrics (Prometheus)

Status codes: 400 bad input, 401 no or wrong API key, 404 not served, 408 the upload was too
slow, 413 over --payload-limit, 422 a bad option, 429 the model's queue is full (retry),
503 still loading or stopping, 504 past the request's time limit.

Examples:
  zoo serve                                   every task whose default model needs no download
  zoo serve --task asr=faster-whisper-base --task classify --port 9000
  zoo serve --task asr --set asr.compute-type=int8 --set asr.batch-size=8
  curl -F file=@photo.jpg 'http://127.0.0.1:8080/v1/run/image-classification?top_k=3'
  ZOO_API_KEY=secret zoo serve --host 0.0.0.0   (then send Authorization: Bearer secret)

SIGTERM (or Ctrl-C) stops taking requests, finishes those in flight and exits 0.";

fn serve_command() -> Command {
    let value = |name: &'static str, value_name: &'static str, help: &'static str| {
        Arg::new(name).long(name).value_name(value_name).help(help)
    };
    Command::new("serve")
        .about("Serve models over HTTP: zoo's API, OpenAI's audio API and the Open Inference Protocol")
        .after_help(SERVE_AFTER_HELP)
        .arg(
            value("task", "TASK[=MODEL]", "Serve TASK (with MODEL, else its default); repeat for more [default: every task whose default model is bundled or cached]")
                .action(ArgAction::Append),
        )
        .arg(
            value("set", "TASK.OPTION=VALUE", "Load TASK's models with OPTION (as `zoo run TASK --OPTION VALUE`; a flag's VALUE is true): the options a request may not set, or defaults for those it may; repeatable")
                .action(ArgAction::Append),
        )
        .arg(value("host", "ADDRESS", "Address to listen on (0.0.0.0 for every interface)").default_value("127.0.0.1"))
        .arg(
            value("port", "PORT", "Port to listen on (0: any free port, printed at start)")
                .default_value("8080")
                .value_parser(clap::value_parser!(u16)),
        )
        .arg(value("api-key", "KEY", "Require Authorization: Bearer KEY on every route but health and metrics (also ZOO_API_KEY)"))
        .arg(
            value("max-batch", "N", "Inputs per model run when requests are batched [default: each task's batch size]")
                .value_parser(clap::value_parser!(u64).range(1..)),
        )
        .arg(
            value("max-queue", "N", "Requests waiting per model before new ones get 429")
                .default_value("64")
                .value_parser(clap::value_parser!(u64).range(1..)),
        )
        .arg(value("payload-limit", "SIZE", "Largest request body: bytes, or with kB, MB, KiB, MiB (413 past it)").default_value("25MiB"))
        .arg(
            value("timeout", "SECONDS", "A request's time limit; each 32 kB of input adds a second (504 past it)")
                .default_value("60")
                .value_parser(clap::value_parser!(u64).range(1..)),
        )
        .arg(value("cors-allow-origin", "ORIGIN", "Let pages from ORIGIN call the API (repeatable); CORS is off without it").action(ArgAction::Append))
        .args(device_args())
}

/// `--device` and `--threads`, for every command that runs models.
fn device_args() -> [Arg; 2] {
    [
        Arg::new("device")
            .long("device")
            .value_name("DEVICE")
            .default_value("cpu")
            .help("cpu, cuda, cuda:N or metal (GPU builds only)"),
        Arg::new("threads")
            .long("threads")
            .value_name("N")
            .value_parser(clap::value_parser!(usize))
            .help("CPU threads to use [default: all cores]"),
    ]
}

fn train_command(registry: &Registry) -> Command {
    let mut train = Command::new("train")
        .about("Train what a task can train (e.g. a classifier head) on your own data")
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand_value_name("TASK")
        .subcommand_help_heading("Tasks");
    for task in registry.tasks().filter(|t| !t.train_options().is_empty()) {
        let mut cmd = Command::new(task.name()).about(task.summary()).visible_aliases(task.aliases().iter().copied());
        cmd = cmd.arg(json_arg("Print the training report as one JSON object"));
        for option in task.train_options() {
            cmd = cmd.arg(option_arg(option));
        }
        train = train.subcommand(cmd);
    }
    train
}

/// A task option as a clap argument.
fn option_arg(option: &TaskOption) -> Arg {
    let mut arg = Arg::new(option.name).long(option.name).help(option.help).help_heading("Task options");
    arg = match option.value_name {
        Some(value_name) => arg.value_name(value_name).action(ArgAction::Set),
        None => arg.action(ArgAction::SetTrue),
    };
    if let Some(default) = option.default {
        arg = arg.default_value(default);
    }
    arg
}

fn run_task_command(task: &dyn Task) -> Command {
    let input = task.input();
    let models: Vec<String> = task
        .models()
        .iter()
        .map(|m| format!("  {}{}  {}", m.id, if m.default { " (default)" } else { "" }, m.summary))
        .collect();
    let mut after = format!("Models in the catalogue:\n{}", models.join("\n"));
    if !task.examples().is_empty() {
        after.push_str("\n\nExamples:\n");
        after.push_str(&task.examples().iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"));
    }
    let mut cmd = Command::new(task.name())
        .about(task.summary())
        .visible_aliases(task.aliases().iter().copied())
        .after_help(after)
        .arg(Arg::new("inputs").value_name("INPUT").num_args(1..).required(input.required).help(input.description))
        .arg(
            Arg::new("model")
                .short('m')
                .long("model")
                .value_name("MODEL")
                .help("Catalogue id, Hub id (owner/name[@revision]) or local folder [default: the task's default]"),
        )
        .arg(json_arg("Print one JSON object per input (JSON Lines), in input order"))
        .args(device_args())
        .args(shard_args());
    for option in task.options() {
        cmd = cmd.arg(option_arg(option));
    }
    cmd.args(explain_args(task))
}

/// Splitting one job's inputs across runs (machines, pods of a Kubernetes Indexed Job).
fn shard_args() -> [Arg; 2] {
    [
        Arg::new("shard-index")
            .long("shard-index")
            .value_name("I")
            .help(format!(
                "Run only shard I (from 0) of --shard-count [default: ${}, as an Indexed Job sets it]",
                zoo_pipeline::INDEX_VARIABLE
            ))
            .help_heading("Sharding"),
        Arg::new("shard-count")
            .long("shard-count")
            .value_name("N")
            .help("Split the inputs (in their expanded order; folders and patterns expand sorted) into N contiguous shards")
            .help_heading("Sharding"),
    ]
}

/// `--explain` for every task, so that each says the same thing the same way; one that decides
/// nothing still takes the flag, to say why there is nothing to explain.
fn explain_args(task: &dyn Task) -> [Arg; 2] {
    let help = match task.explains() {
        Explains::Yes(what) => format!("Show what each decision rested on: {what}"),
        Explains::No(why) => format!("Not available for this task: {why}"),
    };
    [
        Arg::new(explain::FLAG).long(explain::FLAG).action(ArgAction::SetTrue).help(help).help_heading("Explanations"),
        Arg::new(explain::OUT)
            .long(explain::OUT)
            .value_name("DIR")
            .help("Write explanation files (heatmap overlays) into DIR; implies --explain")
            .help_heading("Explanations"),
    ]
}
