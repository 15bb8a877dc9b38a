//! What each subcommand does. Presentation lives here; the work is in zoo-runtime and the tasks.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Result;
use clap::ArgMatches;
use serde_json::{json, Map, Value};
use zoo_runtime::catalog::Source;
use zoo_runtime::{
    explain, progress, Catalog, CatalogEntry, Context, Error, Explains, HubSettings, Model, ModelFile, ModelRef,
    Registry, Task, TaskArgs, TaskOption,
};

pub fn dispatch(registry: &Registry, matches: &ArgMatches) -> Result<ExitCode> {
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
        Some(("run", m)) => {
            let (name, task_matches) = m.subcommand().expect("clap requires a task");
            let task = registry.find(name)?;
            run(task, &hub, task_matches)
        }
        _ => unreachable!("clap requires a subcommand"),
    }
}

fn availability(entry: &'static CatalogEntry, hub: &HubSettings) -> &'static str {
    let model = Model::resolve(&ModelRef::Catalog(entry), hub);
    if entry.is_bundled() && entry.requires.is_empty() {
        "bundled"
    } else if model.is_available_offline() {
        "cached"
    } else {
        "not downloaded"
    }
}

fn list(registry: &Registry, hub: &HubSettings, as_json: bool) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    // One column width for every task's ids, so that the table lines up.
    let id_width = registry.tasks().flat_map(|t| t.models()).map(|m| m.id.len()).max().unwrap_or(0);
    for task in registry.tasks() {
        if as_json {
            for m in task.models() {
                let line = json!({
                    "task": task.name(), "model": m.id, "default": m.default, "architecture": m.architecture,
                    "source": m.source_text(), "licence": m.licence, "available": availability(m, hub),
                    "summary": m.summary, "quality": m.quality,
                });
                writeln!(out, "{line}")?;
            }
            continue;
        }
        let aliases =
            if task.aliases().is_empty() { String::new() } else { format!(" (also: {})", task.aliases().join(", ")) };
        writeln!(out, "{}{aliases}\n  {}", task.name(), task.summary())?;
        for m in task.models() {
            let marker = if m.default { "*" } else { " " };
            let (id, available) = (&m.id, availability(m, hub));
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
                    ModelRef::Catalog(e) if e.is_bundled() && e.requires.is_empty() => {
                        "bundled in zoo, nothing to download".to_string()
                    }
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
    if let Some(CatalogEntry { source: Source::Hub { unpinned: Some(why), revision, .. }, .. }) = model.entry {
        eprintln!("zoo: warning: {} is not pinned to a commit (revision '{revision}'): {why}", model.id);
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
            "quality": entry.quality, "available": availability(entry, hub), "files": files,
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
    println!("  available:    {}", availability(entry, hub));
    println!("  files:");
    for f in &entry.files {
        let size = f.size.map(|s| format!("{s} bytes")).unwrap_or_else(|| "size unknown".into());
        let sha = f.sha256.as_deref().map(|s| format!("sha256 {}…", &s[..12])).unwrap_or_else(|| "no checksum".into());
        println!("    {:<22} {size:<16} {sha}", f.path);
    }
    Ok(ExitCode::SUCCESS)
}

fn run(task: &dyn Task, hub: &HubSettings, m: &ArgMatches) -> Result<ExitCode> {
    if let Some(threads) = m.get_one::<usize>("threads") {
        // candle and rayon read this when their thread pools start, which has not happened yet.
        std::env::set_var("RAYON_NUM_THREADS", threads.max(&1).to_string());
    }
    let as_json = m.get_flag("json");
    let device = zoo_runtime::device::parse_device(m.get_one::<String>("device").expect("has a default"))?;

    let mut args = task_args(task.options(), m);
    explain_args(task, m, &mut args)?;

    let reference = match m.get_one::<String>("model") {
        Some(name) => ModelRef::parse(name)?,
        None => ModelRef::Catalog(Catalog::bundled().default_for(task.name()).ok_or_else(|| {
            Error::Usage(format!("task '{}' has no default model; name one with --model", task.name()))
        })?),
    };
    if let ModelRef::Catalog(entry) = &reference {
        if entry.task != task.name() {
            return Err(Error::WrongTask {
                model: entry.id.clone(),
                model_task: entry.task.clone(),
                task: task.name().into(),
            }
            .into());
        }
    }

    let model = Model::resolve(&reference, hub);
    warn_if_unpinned(&model);
    let ctx = Context { device, hub: hub.clone(), progress: true };
    let mut runner = match task.load(&model, &args, &ctx) {
        Ok(runner) => runner,
        // These already name the model; saying it twice only lengthens the line.
        Err(e @ (Error::Model { .. } | Error::Usage(_) | Error::InvalidOption { .. })) => return Err(e.into()),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("loading model '{}'", model.id))),
    };
    // After the load, which checks the options: a bad option is reported before stdin is read.
    let raw_inputs: Vec<String> = m.get_many::<String>("inputs").map(|v| v.cloned().collect()).unwrap_or_default();
    let inputs = task.expand_inputs(&raw_inputs, &args, runner.read_limit())?;
    if inputs.is_empty() {
        return Err(Error::Usage(format!("no input given; see `zoo run {} --help`", task.name())).into());
    }

    let show_bar = inputs.len() > runner.batch_size() && !std::io::stdout().is_terminal();
    let bar = progress::items(inputs.len() as u64, task.name(), show_bar);
    let mut out = std::io::stdout().lock();
    let mut failed = 0usize;
    for batch in inputs.chunks(runner.batch_size()) {
        for (input, result) in batch.iter().zip(runner.run(batch)) {
            let warnings = result.as_ref().map(|p| p.warnings()).unwrap_or_default();
            for warning in &warnings {
                bar.suspend(|| eprintln!("zoo: warning: {}: {warning}", input.name));
            }
            let line = match result {
                Ok(prediction) if as_json => {
                    let mut object = Map::new();
                    object.insert("input".into(), input.name.clone().into());
                    object.insert("model".into(), model.id.clone().into());
                    object.extend(prediction.json());
                    if !warnings.is_empty() {
                        object.insert("warnings".into(), warnings.into());
                    }
                    Value::Object(object).to_string()
                }
                Ok(prediction) => match prediction.document() {
                    Some(document) => document.trim_end_matches('\n').to_string(),
                    None => format!("{}\n{}", input.name, indent(&prediction.human())),
                },
                Err(e) => {
                    failed += 1;
                    let message = one_line(&e);
                    bar.suspend(|| eprintln!("zoo: error: {message}"));
                    if !as_json {
                        continue;
                    }
                    json!({"input": input.name, "model": model.id, "error": message}).to_string()
                }
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

/// `--explain` and `--explain-out` into the task's arguments, refused for a task that has nothing
/// to explain (a usage error: the user asked for something that does not exist).
fn explain_args(task: &dyn Task, m: &ArgMatches, args: &mut TaskArgs) -> Result<()> {
    let out = m.get_one::<String>(explain::OUT);
    if !m.get_flag(explain::FLAG) && out.is_none() {
        return Ok(());
    }
    if let Explains::No(why) = task.explains() {
        return Err(Error::Usage(format!("--explain: task '{}' has nothing to explain: {why}", task.name())).into());
    }
    args.set(explain::FLAG, "true");
    if let Some(dir) = out {
        args.set(explain::OUT, dir.clone());
    }
    Ok(())
}

fn train(task: &dyn Task, hub: &HubSettings, m: &ArgMatches) -> Result<ExitCode> {
    let args = task_args(task.train_options(), m);
    let ctx = Context { device: candle_cpu(), hub: hub.clone(), progress: true };
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

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
}

/// An error as one line of stderr: some library errors span lines (candle puts context above
/// the cause).
fn one_line(e: &Error) -> String {
    e.to_string().replace('\n', " ")
}
