//! A task's options as each door receives them: defaults, `--explain`, and a request's own.

use zoo_runtime::{explain, Error, Explains, Task, TaskArgs, TaskOption, RETURNED};

/// The options' defaults, as the command line fills them in when they are not given.
pub fn defaults(options: &[TaskOption]) -> TaskArgs {
    let mut args = TaskArgs::new();
    for option in options {
        if let (Some(_), Some(default)) = (option.value_name, option.default) {
            args.set(option.name, default);
        }
    }
    args
}

/// `--explain` (and `--explain-out DIR`) into the task's arguments, refused for a task that has
/// nothing to explain (a usage error: the user asked for something that does not exist).
pub fn explain_options(task: &dyn Task, explain: bool, out: Option<&str>, args: &mut TaskArgs) -> Result<(), Error> {
    if !explain && out.is_none() {
        return Ok(());
    }
    if let Explains::No(why) = task.explains() {
        return Err(Error::Usage(format!("--explain: task '{}' has nothing to explain: {why}", task.name())));
    }
    args.set(explain::FLAG, "true");
    if let Some(dir) = out {
        args.set(explain::OUT, dir);
    }
    Ok(())
}

/// A request's (or a load's) options that cannot be taken.
#[derive(Debug, thiserror::Error)]
pub enum RequestOptionError {
    #[error("unknown option '{name}' for task '{task}'; a request may set: {allowed}")]
    Unknown { name: String, task: String, allowed: String },
    #[error("unknown option '{name}' for task '{task}'; its options: {known}")]
    NotAnOption { name: String, task: String, known: String },
    #[error("option '{name}' cannot be set by a request: {why}")]
    NotAllowed { name: String, why: &'static str },
    #[error("invalid value '{value}' for option '{name}': {why}")]
    BadValue { name: String, value: String, why: &'static str },
    #[error(transparent)]
    Explain(#[from] Error),
}

/// A request's options (`top_k` or `top-k`, values as text; flags `true`/`false`) as task
/// arguments, refusing what a request may not set ([`Task::request_options`]) before anything runs.
/// `explain` is every task's; its value is a flag too.
pub fn request_options<'a>(
    task: &dyn Task,
    pairs: impl IntoIterator<Item = (&'a str, String)>,
) -> Result<TaskArgs, RequestOptionError> {
    let allowed = task.request_options();
    let mut args = TaskArgs::new();
    for (raw_name, value) in pairs {
        let name = option_name(raw_name);
        if name == explain::OUT {
            return Err(RequestOptionError::NotAllowed { name, why: "it names a path on the server's machine" });
        }
        if name == explain::FLAG {
            if flag_value(&name, &value)? {
                explain_options(task, true, None, &mut args)?;
            }
            continue;
        }
        if task.returned_options().contains(&name.as_str()) {
            if flag_value(&name, &value)? {
                args.set(&name, RETURNED);
            }
            continue;
        }
        if task.upload_options().contains(&name.as_str()) {
            return Err(RequestOptionError::NotAllowed {
                name,
                why: "send the file itself, as a multipart file field of that name",
            });
        }
        let Some(option) = allowed.iter().find(|o| o.name == name) else {
            if let Some(option) = task.options().iter().find(|o| o.name == name) {
                let why = if matches!(option.value_name, Some("FILE" | "DIR")) {
                    "it names a path on the server's machine"
                } else if option.settable_per_request() {
                    "it says where inputs come from, and a request brings its inputs itself"
                } else {
                    "limits and resources are the server operator's to set"
                };
                return Err(RequestOptionError::NotAllowed { name, why });
            }
            let mut names: Vec<String> = allowed.iter().map(|o| o.name.replace('-', "_")).collect();
            if !matches!(task.explains(), Explains::No(_)) {
                names.push(explain::FLAG.into());
            }
            return Err(RequestOptionError::Unknown {
                name: raw_name.to_string(),
                task: task.name().into(),
                allowed: names.join(", "),
            });
        };
        set_value(&mut args, option, &value)?;
    }
    Ok(args)
}

/// The options a pipeline is loaded with where no command line parses them (the Python
/// package's keyword arguments, `zoo serve --set`): the defaults, then `pairs` (names spelt with
/// `-` or `_`, a flag's value true or false). Values are checked when the pipeline loads.
pub fn load_options<'a>(
    task: &dyn Task,
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<TaskArgs, RequestOptionError> {
    let mut args = defaults(task.options());
    for (raw_name, value) in pairs {
        let name = option_name(raw_name);
        if name == explain::FLAG {
            if flag_value(&name, value)? {
                explain_options(task, true, None, &mut args)?;
            }
            continue;
        }
        let Some(option) = task.options().iter().find(|o| o.name == name) else {
            let known: Vec<&str> = task.options().iter().map(|o| o.name).collect();
            return Err(RequestOptionError::NotAnOption {
                name: raw_name.to_string(),
                task: task.name().into(),
                known: known.join(", "),
            });
        };
        set_value(&mut args, option, value)?;
    }
    Ok(args)
}

/// An option's value into `args`: a flag is set only when its value says true.
fn set_value(args: &mut TaskArgs, option: &TaskOption, value: &str) -> Result<(), RequestOptionError> {
    if option.value_name.is_none() {
        if flag_value(option.name, value)? {
            args.set(option.name, "true");
        }
    } else {
        args.set(option.name, value);
    }
    Ok(())
}

/// The upload option a multipart file field names (`style_image` or `style-image`: one of the
/// task's [`Task::upload_options`]), to give the upload to with [`TaskArgs::attach`].
pub fn upload_option(task: &dyn Task, field: &str) -> Option<&'static str> {
    let name = option_name(field);
    task.upload_options().iter().copied().find(|o| *o == name)
}

/// An option's name as the command line spells it (`top_k`, ` Top-K` -> `top-k`).
fn option_name(raw: &str) -> String {
    raw.trim().to_ascii_lowercase().replace('_', "-")
}

fn flag_value(name: &str, value: &str) -> Result<bool, RequestOptionError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => {
            Err(RequestOptionError::BadValue { name: name.into(), value: value.into(), why: "a flag is true or false" })
        }
    }
}

#[cfg(all(test, feature = "style-transfer"))]
mod tests {
    use super::*;

    fn style_transfer() -> &'static dyn Task {
        crate::registry().find("style-transfer").expect("style-transfer is registered")
    }

    /// A file the task writes comes back when asked for; a file it reads must come as an upload,
    /// never as a path on the server.
    #[test]
    fn returned_and_uploaded_files_are_never_server_paths() {
        let task = style_transfer();
        let args = request_options(task, [("contact_sheet", "true".to_string())]).unwrap();
        assert_eq!(args.value("contact-sheet"), Some(RETURNED));
        assert!(request_options(task, [("contact_sheet", "false".to_string())]).unwrap().is_empty());
        let refused = request_options(task, [("style_image", "/etc/passwd".to_string())]).unwrap_err().to_string();
        assert!(refused.contains("send the file itself"), "{refused}");
        let refused = request_options(task, [("output", "/tmp/x.png".to_string())]).unwrap_err().to_string();
        assert!(refused.contains("names a path on the server's machine"), "{refused}");

        assert_eq!(upload_option(task, "style_image"), Some("style-image"));
        assert_eq!(upload_option(task, "Style-Image"), Some("style-image"));
        assert_eq!(upload_option(task, "output"), None, "a file the task writes is no upload");
    }
}
