//! The one place tasks are registered. Adding a task: a crate in `tasks/`, a dependency (and
//! feature) in this crate's Cargo.toml, and one line here.

use zoo_runtime::Registry;

pub(crate) fn build() -> Registry {
    #[allow(unused_mut)]
    let mut registry = Registry::new();
    #[cfg(feature = "image-classification")]
    registry.register(zoo_image_classification::ImageClassification);
    #[cfg(feature = "fake-news")]
    registry.register(zoo_fake_news::FakeNews);
    #[cfg(feature = "style-transfer")]
    registry.register(zoo_style_transfer::StyleTransfer);
    #[cfg(feature = "speech-recognition")]
    registry.register(zoo_speech_recognition::SpeechRecognition);
    #[cfg(feature = "object-detection")]
    registry.register(zoo_object_detection::ObjectDetection);
    #[cfg(feature = "face-recognition")]
    registry.register(zoo_face_recognition::FaceRecognition);
    registry
}
