//! Writing PyTorch checkpoints in tests, without PyTorch.

use std::path::Path;

/// Writes `tensors` as PyTorch's zip checkpoint format (what `torch.save(state_dict, f)` writes
/// since 1.6): `archive/data.pkl`, a protocol-2 pickle of an OrderedDict of
/// `torch._utils._rebuild_tensor_v2(persistent storage, offset, size, stride, ...)`, and each
/// tensor's bytes in `archive/data/<key>`.
pub fn write_pth(path: &Path, tensors: &[(String, candle_core::Tensor)]) {
    use std::io::Write;
    fn global(pickle: &mut Vec<u8>, module: &str, name: &str) {
        pickle.extend(format!("c{module}\n{name}\n").bytes());
    }
    fn text(pickle: &mut Vec<u8>, s: &str) {
        pickle.push(b'X');
        pickle.extend((s.len() as u32).to_le_bytes());
        pickle.extend(s.bytes());
    }
    fn int(pickle: &mut Vec<u8>, v: usize) {
        pickle.push(b'J');
        pickle.extend((v as i32).to_le_bytes());
    }
    fn ints(pickle: &mut Vec<u8>, values: &[usize]) {
        pickle.push(b'(');
        values.iter().for_each(|&v| int(pickle, v));
        pickle.push(b't');
    }
    let mut pickle = vec![0x80, 2];
    global(&mut pickle, "collections", "OrderedDict");
    pickle.extend(b")R(");
    for (key, (name, tensor)) in tensors.iter().enumerate() {
        text(&mut pickle, name);
        global(&mut pickle, "torch._utils", "_rebuild_tensor_v2");
        pickle.extend(b"((");
        text(&mut pickle, "storage");
        global(&mut pickle, "torch", "FloatStorage");
        text(&mut pickle, &key.to_string());
        text(&mut pickle, "cpu");
        int(&mut pickle, tensor.elem_count());
        pickle.extend(b"tQ");
        int(&mut pickle, 0);
        let dims = tensor.dims().to_vec();
        let strides: Vec<usize> = (0..dims.len()).map(|i| dims[i + 1..].iter().product()).collect();
        ints(&mut pickle, &dims);
        ints(&mut pickle, &strides);
        pickle.push(0x89);
        global(&mut pickle, "collections", "OrderedDict");
        pickle.extend(b")Rt");
        pickle.push(b'R');
    }
    pickle.extend(b"u.");

    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", stored).unwrap();
    zip.write_all(&pickle).unwrap();
    for (key, (_, tensor)) in tensors.iter().enumerate() {
        zip.start_file(format!("archive/data/{key}"), stored).unwrap();
        let values: Vec<f32> = tensor.flatten_all().unwrap().to_vec1().unwrap();
        zip.write_all(&values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    }
    zip.start_file("archive/version", stored).unwrap();
    zip.write_all(b"3\n").unwrap();
    zip.finish().unwrap();
}
