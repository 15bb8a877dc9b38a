//! Any text as a model's config.json (or a ViT's preprocessor_config.json) beside real tiny
//! weights: the model loads and classifies, or is refused with an error, never a panic or an
//! allocation the weights do not justify. The first byte picks the file; the rest is its text.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use zoo_runtime::candle_core::Device;
use zoo_runtime::{Context, HubSettings, Input, InputSource, Model, ModelRef, Task, TaskArgs};

#[allow(dead_code)]
#[path = "../../tasks/fake-news/tests/support/tiny_classifiers.rs"]
mod tiny_classifiers;
#[allow(dead_code)]
#[path = "../../tasks/image-classification/tests/support/tiny_vit.rs"]
mod tiny_vit;

/// A tiny model folder and its files as written, restored before each run.
struct Folder {
    dir: PathBuf,
    files: Vec<(&'static str, Vec<u8>)>,
}

impl Folder {
    fn new(name: &str, write: impl FnOnce(&Path)) -> Folder {
        let dir = std::env::temp_dir().join(format!("zoo-fuzz-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write(&dir);
        let files = ["config.json", "preprocessor_config.json"]
            .into_iter()
            .filter_map(|f| std::fs::read(dir.join(f)).ok().map(|bytes| (f, bytes)))
            .collect();
        Folder { dir, files }
    }

    fn with(&self, file: &str, text: &[u8]) -> Model {
        for (name, bytes) in &self.files {
            std::fs::write(self.dir.join(name), if *name == file { text } else { bytes }).unwrap();
        }
        Model::resolve(&ModelRef::Local(self.dir.clone()), &HubSettings::from_env(true))
    }
}

struct World {
    vit: Folder,
    bert: Folder,
    photo: InputSource,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let mut png = Vec::new();
        let image =
            zoo_runtime::image::RgbImage::from_fn(40, 30, |x, y| zoo_runtime::image::Rgb([x as u8, y as u8, 90]));
        image.write_to(&mut std::io::Cursor::new(&mut png), zoo_runtime::image::ImageFormat::Png).unwrap();
        let world = World {
            vit: Folder::new("vit", tiny_vit::write),
            bert: Folder::new("bert", |dir| {
                tiny_classifiers::write(dir, tiny_classifiers::Arch::Bert, 2, Some(&["fake", "real"]), None, 7);
            }),
            photo: InputSource::Stdin(png.into()),
        };
        // The seeds in seeds/model_config are these files as written, after their selector byte.
        if let Some(seeds) = std::env::var_os("ZOO_FUZZ_WRITE_SEEDS") {
            let seeds = Path::new(&seeds);
            for (selector, folder, file) in [
                (0u8, &world.vit, "config.json"),
                (1, &world.vit, "preprocessor_config.json"),
                (2, &world.bert, "config.json"),
            ] {
                let (_, bytes) = folder.files.iter().find(|(name, _)| *name == file).unwrap();
                let name = format!("{}-{file}", if selector == 2 { "bert" } else { "vit" });
                std::fs::write(seeds.join(name), [&[selector][..], bytes].concat()).unwrap();
            }
        }
        world
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, text)) = data.split_first() else { return };
    let world = world();
    let ctx = Context { device: Device::Cpu, hub: HubSettings::from_env(true), progress: false, outputs: Default::default() };
    let args = TaskArgs::new();
    let (task, model, input): (&dyn Task, Model, Input) = match which % 3 {
        0 => (
            &zoo_image_classification::ImageClassification,
            world.vit.with("config.json", text),
            Input { name: "photo".into(), source: world.photo.clone() },
        ),
        1 => (
            &zoo_image_classification::ImageClassification,
            world.vit.with("preprocessor_config.json", text),
            Input { name: "photo".into(), source: world.photo.clone() },
        ),
        _ => (
            &zoo_fake_news::FakeNews,
            world.bert.with("config.json", text),
            Input::text("--text", "The minister said the new vaccine was tested on ten thousand people."),
        ),
    };
    if let Ok(mut runner) = task.load(&model, &args, &ctx) {
        let _ = runner.run(std::slice::from_ref(&input));
    }
});
