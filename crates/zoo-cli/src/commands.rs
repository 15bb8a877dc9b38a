//! What each subcommand does. Presentation lives here; the work is in zoo-runtime and the tasks.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Result;
use clap::ArgMatches;
use serde_json::{json, Value};
use zoo_pipeline::Pipeline;
use zoo_runtime::{
    explain, progress, Context, Error, HubSettings, Model, ModelFile, ModelRef, Registry, Task, TaskArgs, TaskOption,
};

pub fn dispatch(registry: &'static Registry, matches: &ArgMatches) -> Result<ExitCode> {
    let offline = matches.get_flag("offline");
    let hub = HubSettings::from_env(offline);
    match matches.subcommand() {
        Some(("list", m)) => list(registry, &hub, m.get_flag("json")),
        Some(("download", m)) => {
            let names: Vec<&String> = m.get_many("models").expect("required").collect();
            download(registry, &hub, &names, m.get_flag("json"))
        }
        Some(("info", m)) => info(&hub, m.get_one::<String>("model").expect("required"), m.get_flag("json")),
        Some(("train", m)) => {
            let (name, task_matches) = m.subcommand().expect("clap requires a task");
            let task = registry.find(name)?;
            train(task, &hub, task_matches)
        }
        Some(("serve", m)) => serve(registry, &hub, m),
        Some(("run", m)) => {
            let (name, task_matches) = m.subcommand().expect("clap requires a task");
            let task = registry.find(name)?;
            run(task, &hub, task_matches)
        }
        _ => unreachable!("clap requires a subcommand"),
    }
}

fn list(registry: &Registry, hub: &HubSettings, as_json: bool) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    // One column width for every task's ids, so that the table lines up.
    let id_width = registry.tasks().flat_map(|t| t.models()).map(|m| m.id.len()).max().unwrap_or(0);
    for task in registry.tasks() {
        if as_json {
            for m in task.models() {
                writeln!(out, "{}", zoo_pipeline::model_json(task, m, hub))?;
            }
            continue;
        }
        let aliases =
            if task.aliases().is_empty() { String::new() } else { format!(" (also: {})", task.aliases().join(", ")) };
        writeln!(out, "{}{aliases}\n  {}", task.name(), task.summary())?;
        for m in task.models() {
            let marker = if m.default { "*" } else { " " };
            let (id, available) = (&m.id, zoo_pipeline::availability(m, hub));
            writeln!(out, "  {marker} {id:<id_width$} {available:<15} {:<12} {}", m.licence, m.summary)?;
        }
        writeln!(out)?;
    }
    if !as_json {
        writeln!(out, "* the task's default model. Cache: {}", hub.cache_dir.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn download(registry: &Registry, hub: &HubSettings, names: &[&String], as_json: bool) -> Result<ExitCode> {
    let mut refs = Vec::new();
    for name in names {
        match registry.find(name) {
            Ok(task) => refs.extend(task.models().into_iter().map(ModelRef::Catalog)),
            Err(_) => refs.push(ModelRef::parse(name)?),
        }
    }
    let mut failed = 0;
    for reference in &refs {
        let model = Model::resolve(reference, hub);
        warn_if_unpinned(&model);
        let result = model.download();
        let line = match &result {
            Ok(files) => {
                let where_ = match reference {
                    ModelRef::Catalog(e) if e.is_wholly_bundled() => "bundled in zoo, nothing to download".to_string(),
                    ModelRef::Local(dir) => format!("a local folder ({})", dir.display()),
                    _ => format!("{} files in {}", files.len(), hub.cache_dir.display()),
                };
                if as_json {
                    let paths: Vec<String> = files.iter().map(ModelFile::display).collect();
                    json!({"model": model.id, "ok": true, "files": paths}).to_string()
                } else {
                    format!("{}: {where_}", model.id)
                }
            }
            Err(e) => {
                failed += 1;
                let message = one_line(e);
                if as_json {
                    json!({"model": model.id, "ok": false, "error": message}).to_string()
                } else {
                    eprintln!("zoo: error: {message}");
                    continue;
                }
            }
        };
        println!("{line}");
    }
    Ok(if failed > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn warn_if_unpinned(model: &Model) {
    if let Some(warning) = zoo_pipeline::unpinned_warning(model) {
        eprintln!("zoo: warning: {warning}");
    }
}

fn info(hub: &HubSettings, reference: &str, as_json: bool) -> Result<ExitCode> {
    let reference = ModelRef::parse(reference)?;
    let model = Model::resolve(&reference, hub);
    let Some(entry) = model.entry else {
        let kind = match reference {
            ModelRef::Local(_) => "a local folder",
            _ => "a Hub model outside the catalogue",
        };
        if as_json {
            println!("{}", json!({"model": model.id, "catalogued": false, "available": model.is_available_offline()}));
        } else {
            println!("{}: {kind}; its task reads its config.json to decide how to run it", model.id);
        }
        return Ok(ExitCode::SUCCESS);
    };
    let files: Vec<Value> =
        entry.files.iter().map(|f| json!({"path": f.path, "sha256": f.sha256, "size": f.size})).collect();
    if as_json {
        let value = json!({
            "model": entry.id, "task": entry.task, "architecture": entry.architecture, "default": entry.default,
            "source": entry.source_text(), "licence": entry.licence, "summary": entry.summary,
            "quality": entry.quality, "available": zoo_pipeline::availability(entry, hub), "files": files,
        });
        println!("{value}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}{}", entry.id, if entry.default { " (default)" } else { "" });
    println!("  task:         {}", entry.task);
    println!("  summary:      {}", entry.summary);
    println!("  architecture: {}", entry.architecture);
    println!("  source:       {}", entry.source_text());
    println!("  licence:      {}", entry.licence);
    println!("  quality:      {}", entry.quality);
    println!("  available:    {}", zoo_pipeline::availability(entry, hub));
    println!("  files:");
    for f in &entry.files {
        let size = f.size.map(|s| format!("{s} bytes")).unwrap_or_else(|| "size unknown".into());
        let sha = f.sha256.as_deref().map(|s| format!("sha256 {}…", &s[..12])).unwrap_or_else(|| "no checksum".into());
        println!("    {:<22} {size:<16} {sha}", f.path);
    }
    Ok(ExitCode::SUCCESS)
}

/// `--threads` (set before any thread pool starts) and `--device`, of a command that runs models.
fn device(m: &ArgMatches) -> Result<zoo_runtime::candle_core::Device> {
    if let Some(threads) = m.get_one::<usize>("threads") {
        // candle and rayon read this when their thread pools start, which has not happened yet.
        std::env::set_var("RAYON_NUM_THREADS", threads.max(&1).to_string());
    }
    Ok(zoo_runtime::device::parse_device(m.get_one::<String>("device").expect("has a default"))?)
}

fn run(task: &'static dyn Task, hub: &HubSettings, m: &ArgMatches) -> Result<ExitCode> {
    let device = device(m)?;
    let as_json = m.get_flag("json");
    // First: a bad shard option costs no model load.
    let index_from_env = std::env::var(zoo_pipeline::INDEX_VARIABLE).ok();
    let shard = zoo_pipeline::Shard::choose(
        m.get_one::<String>("shard-index").map(String::as_str),
        m.get_one::<String>("shard-count").map(String::as_str),
        index_from_env.as_deref(),
    )
    .map_err(|e| Error::Usage(e.to_string()))?;

    let mut args = task_args(task.options(), m);
    zoo_pipeline::explain_options(
        task,
        m.get_flag(explain::FLAG),
        m.get_one::<String>(explain::OUT).map(String::as_str),
        &mut args,
    )?;
    let ctx = Context { device, hub: hub.clone(), progress: true, outputs: Default::default() };
    let model = zoo_pipeline::resolve(task, m.get_one::<String>("model").map(String::as_str), &ctx)?;
    warn_if_unpinned(&model);
    let mut pipeline = Pipeline::load(task, model, args, ctx)?;
    // After the load, which checks the options: a bad option is reported before stdin is read.
    let raw_inputs: Vec<String> = m.get_many::<String>("inputs").map(|v| v.cloned().collect()).unwrap_or_default();
    let inputs = pipeline.expand(&raw_inputs)?;
    if inputs.is_empty() {
        return Err(Error::Usage(format!("no input given; see `zoo run {} --help`", task.name())).into());
    }
    let inputs = match shard {
        Some(shard) => {
            let all = inputs.len();
            let mine = shard.select(inputs);
            if mine.is_empty() {
                // More shards than inputs: this one has nothing to do, which is not a failure.
                eprintln!("zoo: shard {} of {} has no inputs ({all} in all)", shard.index, shard.count);
                return Ok(ExitCode::SUCCESS);
            }
            mine
        }
        None => inputs,
    };

    let show_bar = inputs.len() > pipeline.batch_size() && !std::io::stdout().is_terminal();
    let bar = progress::items(inputs.len() as u64, task.name(), show_bar);
    let mut out = std::io::stdout().lock();
    let mut failed = 0usize;
    for batch in inputs.chunks(pipeline.batch_size()) {
        for outcome in pipeline.run(batch) {
            for warning in outcome.warnings() {
                bar.suspend(|| eprintln!("zoo: warning: {}: {warning}", outcome.input));
            }
            if let Some(message) = outcome.error() {
                failed += 1;
                bar.suspend(|| eprintln!("zoo: error: {message}"));
                if !as_json {
                    continue;
                }
            }
            let line = match outcome.human() {
                Some(text) if !as_json => text,
                _ => Value::Object(outcome.json()).to_string(),
            };
            writeln!(out, "{line}")?;
        }
        out.flush()?;
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    if failed > 0 {
        // With one input its own error line says it all; a tally helps only among several.
        if inputs.len() > 1 {
            eprintln!("zoo: {failed} of {} inputs failed", inputs.len());
        }
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn serve(registry: &'static Registry, hub: &HubSettings, m: &ArgMatches) -> Result<ExitCode> {
    let device = device(m)?;
    let mut models = Vec::new();
    for spec in m.get_many::<String>("task").into_iter().flatten() {
        let (name, model) = match spec.split_once('=') {
            Some((name, model)) => (name, Some(model.trim().to_string())),
            None => (spec.as_str(), None),
        };
        models.push(zoo_server::ServedSpec { task: registry.find(name.trim())?, model });
    }
    let mut task_options = Vec::new();
    for setting in m.get_many::<String>("set").into_iter().flatten() {
        let parsed = setting.split_once('=').and_then(|(target, value)| {
            let (task, name) = target.split_once('.')?;
            Some((task.trim(), name.trim(), value))
        });
        let Some((task, name, value)) = parsed.filter(|(task, name, _)| !task.is_empty() && !name.is_empty()) else {
            return Err(Error::InvalidOption {
                option: "set".into(),
                value: setting.clone(),
                reason: "TASK.OPTION=VALUE, such as asr.batch-size=8".into(),
            }
            .into());
        };
        let task = registry.find(task)?;
        task_options.push(zoo_server::TaskOptionSetting { task, name: name.into(), value: value.into() });
    }
    let payload = m.get_one::<String>("payload-limit").expect("has a default");
    let payload_limit = parse_size(payload).ok_or_else(|| Error::InvalidOption {
        option: "payload-limit".into(),
        value: payload.clone(),
        reason: "a size such as 25MiB, 10MB or 1048576".into(),
    })?;
    let api_key =
        m.get_one::<String>("api-key").cloned().or_else(|| std::env::var("ZOO_API_KEY").ok()).filter(|k| !k.is_empty());
    let config = zoo_server::Config {
        models,
        task_options,
        host: m.get_one::<String>("host").expect("has a default").clone(),
        port: *m.get_one::<u16>("port").expect("has a default"),
        api_key,
        max_batch: m.get_one::<u64>("max-batch").map(|n| *n as usize),
        max_queue: *m.get_one::<u64>("max-queue").expect("has a default") as usize,
        payload_limit,
        timeout: std::time::Duration::from_secs(*m.get_one::<u64>("timeout").expect("has a default")),
        cors_allow_origins: m.get_many::<String>("cors-allow-origin").into_iter().flatten().cloned().collect(),
        context: Context { device, hub: hub.clone(), progress: false, outputs: Default::default() },
    };
    match zoo_server::serve(config) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(zoo_server::ServeError::Usage(message)) => Err(Error::Usage(message).into()),
        Err(e) => Err(e.into()),
    }
}

/// `25MiB`, `10MB`, `512kB`, `1048576`: a size in bytes.
fn parse_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = number * scale;
    (bytes >= 1.0 && bytes.is_finite()).then_some(bytes as usize)
}

/// The values of a task's options as clap parsed them.
fn task_args(options: &[TaskOption], m: &ArgMatches) -> TaskArgs {
    let mut args = TaskArgs::new();
    for option in options {
        if option.value_name.is_some() {
            if let Some(v) = m.get_one::<String>(option.name) {
                args.set(option.name, v.clone());
            }
        } else if m.get_flag(option.name) {
            args.set(option.name, "true");
        }
    }
    args
}

fn train(task: &dyn Task, hub: &HubSettings, m: &ArgMatches) -> Result<ExitCode> {
    let args = task_args(task.train_options(), m);
    let ctx = Context { device: candle_cpu(), hub: hub.clone(), progress: true, outputs: Default::default() };
    let report = task.train(&args, &ctx)?;
    if m.get_flag("json") {
        println!("{}", Value::Object(report.json()));
    } else {
        println!("{}", report.human());
    }
    Ok(ExitCode::SUCCESS)
}

fn candle_cpu() -> zoo_runtime::candle_core::Device {
    zoo_runtime::candle_core::Device::Cpu
}

/// An error as one line of stderr: some library errors span lines (candle puts context above
/// the cause).
fn one_line(e: &Error) -> String {
    e.to_string().replace('\n', " ")
}
