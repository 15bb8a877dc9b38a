//! FastestDet (dog-qiuqiu/FastestDet): a ShuffleNetV2 backbone, an SPP neck and one anchor-free
//! head on a stride-16 grid, read from the PyTorch state dict its authors publish. Batch norms are
//! folded into the convolutions at load, and the network runs on the runtime's NHWC kernels (the
//! MobileNets' depthwise tiles and packed 1x1 products, with bias and ReLU fused into their
//! stores): at 352x352 it is about 0.12 G multiply-adds in some sixty layers, small enough that a
//! graph of tensor operations spends more time allocating, copying and handing work between
//! threads than computing.
//!
//! ShuffleNet's channel shuffle costs no pass of its own here. Every map past the first stage is
//! kept as two blocks of channels (each an NHWC map of half the width), in an order chosen at load
//! so that the channels a unit transforms are the first half of each block: its expansion reads
//! them in place, as two pieces of each row, with its weights permuted to match; each unit's
//! projection writes its outputs already in the order the next unit wants. Only the channels a
//! unit passes through are copied, as any implementation must, through a table made at load.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;
use zoo_runtime::cpu::nhwc::{ConvWeights, Padding, Pieces, Pointwise};
use zoo_runtime::cpu::Activation;

/// The input side the network was trained at; pictures are stretched to it.
pub const INPUT: usize = 352;

/// torch.nn.BatchNorm2d's default.
const BN_EPS: f64 = 1e-5;

/// A convolution with its batch norm folded in, as PyTorch lays it out: (out, in, k, k) and (out).
struct Folded {
    weight: Tensor,
    bias: Tensor,
    /// Output and input channels (inputs per filter: 1 for a depthwise one).
    out: usize,
    inputs: usize,
    depthwise: bool,
}

impl Folded {
    /// A depthwise layer over the channels `order` lists, in that order.
    fn depthwise(&self, order: &[usize], stride: usize, activation: Activation) -> Result<ConvWeights> {
        let index = indices(order)?;
        let (weight, bias) = (self.weight.index_select(&index, 0)?, self.bias.index_select(&index, 0)?);
        Ok(ConvWeights::new(&weight, &bias, stride, true, false)?.with(activation, Padding::Symmetric))
    }

    /// A 1x1 layer whose input row holds the input channels `inputs` lists, in that order, and
    /// whose output row holds the output channels `outputs` lists.
    fn pointwise(&self, inputs: &[usize], outputs: &[usize], activation: Activation) -> Result<Pointwise> {
        let weight = self.weight.index_select(&indices(inputs)?, 1)?.index_select(&indices(outputs)?, 0)?;
        let bias = self.bias.index_select(&indices(outputs)?, 0)?;
        Ok(Pointwise::new(&weight, &bias, false)?.with_activation(activation))
    }
}

fn indices(order: &[usize]) -> Result<Tensor> {
    let order: Vec<u32> = order.iter().map(|&i| i as u32).collect();
    Tensor::new(order.as_slice(), &Device::Cpu)
}

fn identity(n: usize) -> Vec<usize> {
    (0..n).collect()
}

/// The order within each of a unit's two output blocks (`half` channels, the block's first
/// logical channel `first`): odd channels first, so that the next unit finds the channels it
/// transforms at the start of each block.
fn odd_first(first: usize, half: usize) -> Vec<usize> {
    (0..half).filter(|i| i % 2 == 1).chain((0..half).filter(|i| i % 2 == 0)).map(|i| first + i).collect()
}

/// A map in NHWC whose channels are in `blocks` blocks of `width`: block b is an (h, w, width)
/// map of its own, at `b * h * w * width`. `order[p]` is the network's channel stored at
/// position p (block p / width, channel p % width of the block).
struct Layout {
    blocks: usize,
    width: usize,
    order: Vec<usize>,
}

impl Layout {
    fn plain(channels: usize) -> Self {
        Layout { blocks: 1, width: channels, order: identity(channels) }
    }

    fn split(half: usize) -> Self {
        let order = [odd_first(0, half), odd_first(half, half)].concat();
        Layout { blocks: 2, width: half, order }
    }

    fn channels(&self) -> usize {
        self.blocks * self.width
    }

    /// Where the network's channel `channel` is stored.
    fn position(&self, channel: usize) -> usize {
        self.order.iter().position(|&c| c == channel).expect("every channel is stored")
    }
}

/// A stride-2 unit: it halves the map and doubles its width, its depthwise-projected input in
/// one output block and its main branch in the other.
struct DownUnit {
    /// The input's blocks and their width.
    blocks: usize,
    width: usize,
    /// The projection's depthwise convolution, one per input block.
    reduce: Vec<ConvWeights>,
    reduced: Pointwise,
    main: MainBranch,
}

/// A stride-1 unit: half the channels passed on, the other half transformed.
struct ShuffleUnit {
    main: MainBranch,
    /// For each block the passed-on channels come from: (position in the output block, channel
    /// in the input block).
    passed: [Vec<(usize, usize)>; 2],
}

/// Buffers a pass takes and gives back, kept between pictures: fresh ones, a few megabytes each,
/// fault their pages in on every picture, which took longer than the network itself (measured on
/// 2 cores, one thread: 4.6 ms a picture against 1.9 ms with the buffers kept). A buffer comes
/// back holding what it held: every layer writes all of its output (in this crate's own tests,
/// buffers are handed out full of NaN, so that one which does not shows).
#[derive(Default)]
struct Arena {
    free: std::sync::Mutex<Vec<Vec<f32>>>,
}

/// The first `len` values of a buffer of the arena's; the buffer keeps its whole length, so that
/// handing it out for less and later for more costs nothing.
struct Buffer {
    data: Vec<f32>,
    len: usize,
}

impl std::ops::Deref for Buffer {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.data[..self.len]
    }
}

impl std::ops::DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.data[..self.len]
    }
}

impl Arena {
    /// A buffer of `len` values (stale ones, if it was used before): the smallest kept one that
    /// is long enough, else the longest, grown.
    fn take(&self, len: usize) -> Buffer {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let best = (0..free.len()).filter(|&i| free[i].len() >= len).min_by_key(|&i| free[i].len());
        let at = best.or_else(|| (0..free.len()).max_by_key(|&i| free[i].len()));
        let mut data = at.map(|i| free.swap_remove(i)).unwrap_or_default();
        drop(free);
        if data.len() < len {
            data.resize(len, 0.0);
        }
        if cfg!(test) {
            data[..len].fill(f32::NAN);
        }
        Buffer { data, len }
    }

    fn give(&self, buffers: impl IntoIterator<Item = Buffer>) {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).extend(buffers.into_iter().map(|b| b.data));
    }
}

/// Both units' main branch: a 1x1 expansion (ReLU), a depthwise 3x3 and a 1x1 projection (ReLU)
/// into the unit's second output block, in that block's order.
struct MainBranch {
    expand: Pointwise,
    depthwise: ConvWeights,
    project: Pointwise,
}

impl MainBranch {
    /// `[expand, depthwise, project]` reading the input channels `inputs` lists (in the order the
    /// expansion's pieces give them) and writing block 1 of `output`.
    fn new(layers: &[Folded; 3], inputs: &[usize], stride: usize, output: &Layout) -> Result<Self> {
        let [expand, depthwise, project] = layers;
        let (mid, half) = (expand.out, output.width);
        Ok(MainBranch {
            expand: expand.pointwise(inputs, &identity(mid), Activation::Relu)?,
            depthwise: depthwise.depthwise(&identity(mid), stride, Activation::Identity)?,
            project: project.pointwise(
                &identity(mid),
                &output.order[half..].iter().map(|c| c - half).collect::<Vec<_>>(),
                Activation::Relu,
            )?,
        })
    }

    /// The branch over the (h, w) map `x`, its rows as `pieces` says, into `out`.
    fn forward(
        &self,
        x: &[f32],
        pieces: Pieces,
        (h, w): (usize, usize),
        out: &mut [f32],
        threads: usize,
        arena: &Arena,
    ) {
        let (oh, ow) = self.depthwise.output_hw(h, w);
        let mut expanded = arena.take(h * w * self.expand.out_ch);
        self.expand.run_pieces(x, pieces, h * w, None, &mut expanded, threads);
        let mut spread = arena.take(oh * ow * self.expand.out_ch);
        self.depthwise.run_on(&expanded, 1, h, w, &mut spread, threads);
        self.project.run(&spread, oh * ow, None, out, threads);
        arena.give([expanded, spread]);
    }
}

/// Where a pass's layers read their inputs: block b of an (h, w, width) map at b * h * w * width.
fn block_starts(blocks: usize, pixels: usize, width: usize) -> Vec<usize> {
    (0..blocks).map(|b| b * pixels * width).collect()
}

impl DownUnit {
    fn new(layers: &RawUnit, input: &Layout) -> Result<(Self, Layout)> {
        let ([_, _, project], Some([reduce, reduced])) = (&layers.main, &layers.projection) else {
            unreachable!("a stride-2 unit has a projection")
        };
        let half = reduced.out;
        if project.out != half || half % 2 == 1 {
            candle_core::bail!(
                "a stride-2 unit's branches give {half} and {} channels, not one even width",
                project.out
            )
        }
        let output = Layout::split(half);
        let unit = DownUnit {
            blocks: input.blocks,
            width: input.width,
            reduce: input
                .order
                .chunks(input.width)
                .map(|block| reduce.depthwise(block, 2, Activation::Identity))
                .collect::<Result<_>>()?,
            reduced: reduced.pointwise(&input.order, &output.order[..half], Activation::Relu)?,
            main: MainBranch::new(&layers.main, &input.order, 2, &output)?,
        };
        Ok((unit, output))
    }

    /// x: an (h, w) map in the blocks the unit was made for; returns the (ceil(h/2),
    /// ceil(w/2)) output, in its two blocks.
    fn forward(&self, x: &[f32], (h, w): (usize, usize), threads: usize, arena: &Arena) -> Buffer {
        let (oh, ow) = self.main.depthwise.output_hw(h, w);
        let half = self.reduced.out_ch;
        let mut out = arena.take(2 * oh * ow * half);
        let (left, right) = out.split_at_mut(oh * ow * half);
        let width = self.width;
        let mut reduced = arena.take(oh * ow * self.blocks * width);
        for (b, (conv, into)) in self.reduce.iter().zip(reduced.chunks_exact_mut(oh * ow * width)).enumerate() {
            conv.run_on(&x[b * h * w * width..][..h * w * width], 1, h, w, into, threads);
        }
        let starts = block_starts(self.blocks, oh * ow, width);
        let pieces = Pieces { stride: width, starts: &starts, len: width };
        self.reduced.run_pieces(&reduced, pieces, oh * ow, None, left, threads);

        let starts = block_starts(self.blocks, h * w, width);
        let pieces = Pieces { stride: width, starts: &starts, len: width };
        self.main.forward(x, pieces, (h, w), right, threads, arena);
        arena.give([reduced]);
        out
    }
}

impl ShuffleUnit {
    fn new(layers: &RawUnit, input: &Layout) -> Result<(Self, Layout)> {
        let [_, _, project] = &layers.main;
        let half = input.width;
        if input.blocks != 2 || half % 2 == 1 || project.out != half {
            candle_core::bail!("a stride-1 unit over {} channels gives {}", input.channels(), project.out)
        }
        // The channels it transforms (the odd ones) are the first half of each block.
        let transformed: Vec<usize> = [&input.order[..half / 2], &input.order[half..half + half / 2]].concat();
        if transformed.iter().any(|c| c % 2 == 0) {
            candle_core::bail!("a stride-1 unit over {half}-channel blocks whose odd channels do not lead them")
        }
        let output = Layout::split(half);
        let mut passed = [Vec::new(), Vec::new()];
        for (at, &channel) in output.order[..half].iter().enumerate() {
            // The shuffle passes channel 2i of the input on as channel i.
            let from = input.position(2 * channel);
            passed[from / half].push((at, from % half));
        }
        let inputs: Vec<usize> = transformed.iter().map(|c| c / 2).collect();
        let unit = ShuffleUnit { main: MainBranch::new(&layers.main, &inputs, 1, &output)?, passed };
        Ok((unit, output))
    }

    /// x: an (h, w) map in two blocks of `half` channels; returns the unit's output, likewise.
    fn forward(&self, x: &[f32], (h, w): (usize, usize), threads: usize, arena: &Arena) -> Buffer {
        let (pixels, half) = (h * w, self.main.project.out_ch);
        let mut out = arena.take(2 * pixels * half);
        let (passed, main) = out.split_at_mut(pixels * half);
        let blocks = x.split_at(pixels * half);
        for_rows(passed, w * half, threads, |y, row| {
            for (b, from) in [blocks.0, blocks.1].into_iter().enumerate() {
                let from = &from[y * w * half..][..w * half];
                for (pixel, source) in row.chunks_exact_mut(half).zip(from.chunks_exact(half)) {
                    for &(at, channel) in &self.passed[b] {
                        pixel[at] = source[channel];
                    }
                }
            }
        });
        let pieces = Pieces { stride: half, starts: &[0, pixels * half], len: half / 2 };
        self.main.forward(x, pieces, (h, w), main, threads, arena);
        out
    }
}

/// `f(y, row)` over each `row_len`-long row of `out`, split over the threads when there are several.
fn for_rows(out: &mut [f32], row_len: usize, threads: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if threads > 1 {
        out.par_chunks_mut(row_len).enumerate().for_each(|(y, row)| f(y, row));
    } else {
        out.chunks_mut(row_len).enumerate().for_each(|(y, row)| f(y, row));
    }
}

/// 3x3 windows at stride 2 with one pixel of padding over an (h, w, c) map, as torch's
/// MaxPool2d(3, 2, 1) and AvgPool2d(3, 2, 1) take them (the average always over 9:
/// count_include_pad), each output pixel's c values written at `offset` of its `stride`-long
/// row of `out`.
#[allow(clippy::too_many_arguments)]
fn pool(
    x: &[f32],
    (h, w, c): (usize, usize, usize),
    max: bool,
    out: &mut [f32],
    stride: usize,
    offset: usize,
    threads: usize,
) {
    let (oh, ow) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
    let out = &mut out[..oh * ow * stride];
    let combine = |into: &mut [f32], from: &[f32]| {
        if max {
            into.iter_mut().zip(from).for_each(|(a, &b)| *a = a.max(b));
        } else {
            into.iter_mut().zip(from).for_each(|(a, &b)| *a += b);
        }
    };
    for_rows(out, ow * stride, threads, |oy, row| {
        // Down the window's rows first, whole rows at a time, then across.
        let rows = (2 * oy).saturating_sub(1)..(2 * oy + 2).min(h);
        let mut line = x[rows.start * w * c..][..w * c].to_vec();
        for iy in rows.start + 1..rows.end {
            combine(&mut line, &x[iy * w * c..][..w * c]);
        }
        for (ox, pixel) in row.chunks_exact_mut(stride).enumerate() {
            let pixel = &mut pixel[offset..offset + c];
            let columns = (2 * ox).saturating_sub(1)..(2 * ox + 2).min(w);
            pixel.copy_from_slice(&line[columns.start * c..][..c]);
            for ix in columns.start + 1..columns.end {
                combine(pixel, &line[ix * c..][..c]);
            }
            if !max {
                pixel.iter_mut().for_each(|p| *p /= 9.0);
            }
        }
    });
}

/// The state dict's tensors, taken by the layers that use them.
struct Weights<'a> {
    tensors: &'a HashMap<String, Tensor>,
}

impl Weights<'_> {
    fn get(&self, name: &str) -> Result<Tensor> {
        let tensor = self
            .tensors
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("the state dict has no tensor {name}")))?;
        tensor.to_dtype(DType::F32)?.to_device(&Device::Cpu)
    }

    /// The convolution `{prefix}{conv}` followed by the batch norm `{prefix}{conv + 1}`, folded.
    fn conv(&self, prefix: &str, conv: usize, padding: usize) -> Result<Folded> {
        let weight = self.get(&format!("{prefix}{conv}.weight"))?;
        let norm = |field: &str| self.get(&format!("{prefix}{}.{field}", conv + 1));
        let (gamma, beta, mean, var) = (norm("weight")?, norm("bias")?, norm("running_mean")?, norm("running_var")?);
        let (out, inputs, kh, kw) = weight.dims4()?;
        // Every layer of the network pads by half its kernel: the kernel follows from the padding.
        let k = 2 * padding + 1;
        if out == 0 || inputs == 0 || (kh, kw) != (k, k) {
            candle_core::bail!(
                "{prefix}{conv}: a {out}x{inputs}x{kh}x{kw} convolution where FastestDet has a {k}x{k} one"
            )
        }
        for (field, t) in [("weight", &gamma), ("bias", &beta), ("running_mean", &mean), ("running_var", &var)] {
            if t.dims() != [out] {
                candle_core::bail!("{prefix}{}.{field}: {:?} values for {out} channels", conv + 1, t.dims())
            }
        }
        let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
        let bias = (beta - (mean * &scale)?)?;
        let weight = weight.broadcast_mul(&scale.reshape((out, 1, 1, 1))?)?;
        let finite =
            |t: &Tensor| -> Result<bool> { Ok(t.flatten_all()?.to_vec1::<f32>()?.iter().all(|v| v.is_finite())) };
        if !finite(&weight)? || !finite(&bias)? {
            candle_core::bail!(
                "{prefix}{conv}: weights that are not finite once the norm is folded in (a negative running_var?)"
            )
        }
        Ok(Folded { weight, bias, out, inputs, depthwise: false })
    }

    /// A depthwise convolution (one filter per channel) and its norm.
    fn depthwise(&self, prefix: &str, conv: usize, padding: usize) -> Result<Folded> {
        let mut layer = self.conv(prefix, conv, padding)?;
        if layer.inputs != 1 {
            candle_core::bail!(
                "{prefix}{conv}: expected a depthwise convolution, found {} inputs per filter",
                layer.inputs
            )
        }
        layer.depthwise = true;
        Ok(layer)
    }
}

/// One ShuffleNetV2 unit's layers as the state dict has them: the main branch's 1x1, depthwise
/// and 1x1 convolutions, and a stride-2 unit's projection (depthwise, 1x1).
struct RawUnit {
    main: [Folded; 3],
    projection: Option<[Folded; 2]>,
}

impl RawUnit {
    fn load(w: &Weights, prefix: &str, stride: usize) -> Result<Self> {
        let main = format!("{prefix}branch_main.");
        let main = [w.conv(&main, 0, 0)?, w.depthwise(&main, 3, 1)?, w.conv(&main, 5, 0)?];
        let projection = match stride {
            1 => None,
            _ => {
                let proj = format!("{prefix}branch_proj.");
                Some([w.depthwise(&proj, 0, 1)?, w.conv(&proj, 2, 0)?])
            }
        };
        Ok(RawUnit { main, projection })
    }
}

enum Unit {
    Down(DownUnit),
    Shuffle(ShuffleUnit),
}

pub struct FastestDet {
    /// The first convolution (3x3, stride 2, over the three colours) as a product whose rows
    /// are read in place from the padded input: each output pixel's window is three runs of
    /// nine values, one per kernel row.
    stem: Pointwise,
    /// Each stage's units, and the layout of its output.
    stages: Vec<(Vec<Unit>, Layout)>,
    spp_in: Pointwise,
    /// Depthwise 5x5 convolutions with ReLUs, one, two and three deep, each from the SPP's input.
    spp_branches: [Vec<ConvWeights>; 3],
    spp_out: Pointwise,
    head_in: Pointwise,
    /// Objectness, box and class heads: a depthwise 5x5 with ReLU, then a 1x1 to its outputs.
    heads: [(ConvWeights, Pointwise); 3],
    pub classes: usize,
    arena: Arena,
}

impl FastestDet {
    pub fn load(tensors: &HashMap<String, Tensor>) -> Result<Self> {
        let w = Weights { tensors };
        let stem = w.conv("backbone.first_conv.", 0, 1)?;
        let stages = [("stage2", 4), ("stage3", 8), ("stage4", 4)]
            .into_iter()
            .map(|(stage, units)| {
                (0..units)
                    .map(|i| RawUnit::load(&w, &format!("backbone.{stage}.{i}."), if i == 0 { 2 } else { 1 }))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        let branch = |name: &str, depth: usize| -> Result<Vec<Folded>> {
            (0..depth).map(|i| w.depthwise(&format!("SPP.{name}."), 3 * i, 2)).collect()
        };
        let head = |name: &str| -> Result<[Folded; 2]> {
            let prefix = format!("detect_head.{name}_layers.conv5x5.");
            Ok([w.depthwise(&prefix, 0, 2)?, w.conv(&prefix, 3, 0)?])
        };
        let heads = [head("obj")?, head("reg")?, head("cls")?];
        let classes = heads[2][1].out;
        if heads[0][1].out != 1 || heads[1][1].out != 4 || classes == 0 {
            candle_core::bail!("the objectness, box and class heads must have 1, 4 and at least 1 outputs")
        }
        let spp_in = w.conv("SPP.Conv1x1.conv1x1.", 0, 0)?;
        let spp_branches = [branch("S1", 1)?, branch("S2", 2)?, branch("S3", 3)?];
        let spp_out = w.conv("SPP.output.", 0, 0)?;
        let head_in = w.conv("detect_head.conv1x1.conv1x1.", 0, 0)?;
        check_widths(&stem, &stages, &spp_in, &spp_branches, &spp_out, &head_in, &heads)?;

        let mut layout = Layout::plain(stem.out);
        let mut built = Vec::new();
        let mut neck_order = Vec::new();
        for stage in &stages {
            let mut units = Vec::new();
            for raw in stage {
                let (unit, output) = match raw.projection {
                    Some(_) => DownUnit::new(raw, &layout).map(|(u, l)| (Unit::Down(u), l))?,
                    None => ShuffleUnit::new(raw, &layout).map(|(u, l)| (Unit::Shuffle(u), l))?,
                };
                units.push(unit);
                layout = output;
            }
            // The neck lays the three levels side by side, each as its blocks are stored.
            let first = neck_order.len();
            neck_order.extend(layout.order.iter().map(|c| first + c));
            built.push((units, Layout { blocks: layout.blocks, width: layout.width, order: layout.order.clone() }));
        }
        let spp = spp_in.out;
        let mut branches = Vec::new();
        for branch in &spp_branches {
            branches.push(
                branch
                    .iter()
                    .map(|conv| conv.depthwise(&identity(spp), 1, Activation::Relu))
                    .collect::<Result<Vec<_>>>()?,
            );
        }
        let mut built_heads = Vec::new();
        for [depthwise, pointwise] in &heads {
            built_heads.push((
                depthwise.depthwise(&identity(depthwise.out), 1, Activation::Relu)?,
                pointwise.pointwise(&identity(pointwise.inputs), &identity(pointwise.out), Activation::Identity)?,
            ));
        }
        Ok(FastestDet {
            stem: {
                // (out, colour, ky, kx) -> (out, ky, kx, colour): a window's values as they lie in NHWC.
                let weight = stem.weight.permute((0, 2, 3, 1))?.reshape((stem.out, ()))?;
                Pointwise::new(&weight, &stem.bias, false)?.with_activation(Activation::Relu)
            },
            stages: built,
            spp_in: spp_in.pointwise(&neck_order, &identity(spp), Activation::Relu)?,
            spp_branches: branches.try_into().map_err(|_| candle_core::Error::Msg("three SPP branches".into()))?,
            spp_out: spp_out.pointwise(&identity(spp_out.inputs), &identity(spp), Activation::Relu)?,
            head_in: head_in.pointwise(&identity(spp), &identity(head_in.out), Activation::Relu)?,
            heads: built_heads.try_into().map_err(|_| candle_core::Error::Msg("three heads".into()))?,
            classes,
            arena: Arena::default(),
        })
    }
}

/// Each layer's inputs are what the layer before gives: a state dict of another shape is
/// refused at load rather than read past a buffer at the first picture.
fn check_widths(
    stem: &Folded,
    stages: &[Vec<RawUnit>],
    spp_in: &Folded,
    spp_branches: &[Vec<Folded>; 3],
    spp_out: &Folded,
    head_in: &Folded,
    heads: &[[Folded; 2]; 3],
) -> Result<()> {
    let mismatch = |what: &str, want: usize, got: usize| {
        Err(candle_core::Error::Msg(format!("{what} takes {want} channels but is given {got}")))
    };
    let takes = |conv: &Folded| if conv.depthwise { conv.out } else { conv.inputs };
    if stem.inputs != 3 {
        return mismatch("the first convolution", stem.inputs, 3);
    }
    let mut width = stem.out;
    let mut levels = Vec::new();
    for (s, stage) in stages.iter().enumerate() {
        for (i, unit) in stage.iter().enumerate() {
            let given = if unit.projection.is_some() { width } else { width / 2 };
            let [a, b, c] = &unit.main;
            if takes(a) != given || takes(b) != a.out || takes(c) != b.out {
                return mismatch(&format!("stage {} unit {i}", s + 2), takes(a), given);
            }
            width = match &unit.projection {
                Some([d, p]) if takes(d) != width || takes(p) != d.out => {
                    return mismatch(&format!("stage {} unit {i}'s projection", s + 2), takes(d), width)
                }
                Some([_, p]) => p.out + c.out,
                None if !width.is_multiple_of(2) || width / 2 + c.out != width => {
                    return mismatch(&format!("stage {} unit {i}", s + 2), width, width / 2 + c.out)
                }
                None => width,
            };
        }
        levels.push(width);
    }
    let neck: usize = levels.iter().sum();
    if takes(spp_in) != neck {
        return mismatch("the SPP", takes(spp_in), neck);
    }
    let spp = spp_in.out;
    let mut concatenated = 0;
    for branch in spp_branches {
        if branch.iter().any(|conv| conv.out != spp) {
            return mismatch("an SPP branch", spp, branch[0].out);
        }
        concatenated += spp;
    }
    if takes(spp_out) != concatenated || spp_out.out != spp || takes(head_in) != spp {
        return mismatch("the SPP output", takes(spp_out), concatenated);
    }
    for [depthwise, pointwise] in heads {
        if depthwise.out != head_in.out || takes(pointwise) != depthwise.out {
            return mismatch("a head", depthwise.out, head_in.out);
        }
    }
    Ok(())
}

impl Unit {
    /// The unit over an (h, w) map; `size` becomes its output's.
    fn forward(&self, x: &[f32], size: &mut (usize, usize), threads: usize, arena: &Arena) -> Buffer {
        match self {
            Unit::Down(unit) => {
                let out = unit.forward(x, *size, threads, arena);
                *size = unit.main.depthwise.output_hw(size.0, size.1);
                out
            }
            Unit::Shuffle(unit) => unit.forward(x, *size, threads, arena),
        }
    }
}

impl FastestDet {
    /// One picture, 3 planes of 352x352 (BGR, 0..1) -> `5 + classes` planes of 22x22: objectness
    /// (after its sigmoid), the box's four raw terms, and the class probabilities, as the
    /// published ONNX export gives them. Each layer is split over `threads`.
    fn forward_one(&self, input: &[f32], threads: usize) -> Buffer {
        // The planes interleaved into pixels, inside a border of one zero pixel: the stem's padding.
        let plane = INPUT * INPUT;
        let side = INPUT + 2;
        let arena = &self.arena;
        let mut pixels = arena.take(side * side * 3);
        // The border: the top and bottom rows, and each row's first and last pixel.
        pixels[..side * 3].fill(0.0);
        pixels[(side - 1) * side * 3..].fill(0.0);
        for row in pixels.chunks_exact_mut(side * 3) {
            row[..3].fill(0.0);
            row[(side - 1) * 3..].fill(0.0);
        }
        for_rows(&mut pixels[side * 3..(side - 1) * side * 3], side * 3, threads, |y, row| {
            let [b, g, r] = [0, 1, 2].map(|c| &input[c * plane + y * INPUT..][..INPUT]);
            for (((pixel, &b), &g), &r) in row[3..].chunks_exact_mut(3).zip(b).zip(g).zip(r) {
                pixel.copy_from_slice(&[b, g, r]);
            }
        });
        let (sh, sw) = (INPUT.div_ceil(2), INPUT.div_ceil(2));
        let c = self.stem.out_ch;
        let mut stem = arena.take(sh * sw * c);
        let starts = [0, side * 3, 2 * side * 3];
        for_rows(&mut stem, sw * c, threads, |oy, row| {
            // Output pixels two input pixels apart, each window from the padded rows 2oy..2oy+2.
            let pieces = Pieces { stride: 2 * 3, starts: &starts, len: 3 * 3 };
            self.stem.run_pieces(&pixels[2 * oy * side * 3..], pieces, sw, None, row, 1);
        });
        let mut size = ((sh - 1) / 2 + 1, (sw - 1) / 2 + 1);
        let mut pooled = arena.take(size.0 * size.1 * c);
        pool(&stem, (sh, sw, c), true, &mut pooled, c, 0, threads);

        let mut levels: Vec<(Buffer, (usize, usize))> = Vec::with_capacity(3);
        for (units, _) in &self.stages {
            let source = levels.last().map_or(&pooled, |(x, _)| x);
            let mut x = units[0].forward(source, &mut size, threads, arena);
            for unit in &units[1..] {
                let next = unit.forward(&x, &mut size, threads, arena);
                arena.give([std::mem::replace(&mut x, next)]);
            }
            levels.push((x, size));
        }

        // The finest level averaged down, the middle one as it is, the coarsest repeated up,
        // side by side, each level's blocks as they are stored.
        let (h, w) = levels[1].1;
        let cells = h * w;
        let neck_width = self.spp_in.in_ch;
        let mut neck = arena.take(cells * neck_width);
        let mut at = 0;
        for (level, ((x, (lh, lw)), (_, layout))) in levels.iter().zip(&self.stages).enumerate() {
            let (lh, lw, width) = (*lh, *lw, layout.width);
            for block in x.chunks_exact(lh * lw * width) {
                match level {
                    0 => pool(block, (lh, lw, width), false, &mut neck, neck_width, at, threads),
                    _ => {
                        for (i, row) in neck.chunks_exact_mut(neck_width).enumerate() {
                            let (y, x) = (i / w * lh / h, i % w * lw / w);
                            row[at..at + width].copy_from_slice(&block[(y * lw + x) * width..][..width]);
                        }
                    }
                }
                at += width;
            }
        }
        assert_eq!(at, neck_width, "the levels fill the neck");

        let spp = self.spp_in.out_ch;
        let mut x = arena.take(cells * spp);
        self.spp_in.run(&neck, cells, None, &mut x, threads);
        let mut branches = arena.take(3 * cells * spp);
        for (branch, out) in self.spp_branches.iter().zip(branches.chunks_exact_mut(cells * spp)) {
            let (last, first) = branch.split_last().expect("an SPP branch has a layer");
            let mut held: Option<Buffer> = None;
            for conv in first {
                let mut next = arena.take(cells * spp);
                conv.run_on(held.as_ref().unwrap_or(&x), 1, h, w, &mut next, threads);
                arena.give(held.replace(next));
            }
            last.run_on(held.as_ref().unwrap_or(&x), 1, h, w, out, threads);
            arena.give(held);
        }
        let mut y = arena.take(cells * spp);
        let starts = block_starts(3, cells, spp);
        let pieces = Pieces { stride: spp, starts: &starts, len: spp };
        self.spp_out.run_pieces(&branches, pieces, cells, Some(&x), &mut y, threads);
        let mut z = arena.take(cells * self.head_in.out_ch);
        self.head_in.run(&y, cells, None, &mut z, threads);

        let mut out = arena.take((5 + self.classes) * cells);
        let mut spread = arena.take(cells * self.head_in.out_ch);
        let mut first_plane = 0;
        for (depthwise, pointwise) in &self.heads {
            depthwise.run_on(&z, 1, h, w, &mut spread, threads);
            let n = pointwise.out_ch;
            let mut values = arena.take(cells * n);
            pointwise.run(&spread, cells, None, &mut values, threads);
            for (cell, row) in values.chunks_exact_mut(n).enumerate() {
                match first_plane {
                    0 => row.iter_mut().for_each(|v| *v = 1.0 / (1.0 + zoo_runtime::cpu::exp(-*v))),
                    1 => {}
                    _ => zoo_runtime::cpu::softmax(row),
                }
                for (i, &v) in row.iter().enumerate() {
                    out[(first_plane + i) * cells + cell] = v;
                }
            }
            first_plane += n;
            arena.give([values]);
        }
        arena.give([pixels, stem, pooled, neck, x, branches, y, z, spread]);
        arena.give(levels.into_iter().map(|(level, _)| level));
        out
    }

    /// (n, 3, 352, 352) BGR in 0..1 -> (n, 5 + classes, 22, 22), as the published ONNX export.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        if (c, h, w) != (3, INPUT, INPUT) {
            candle_core::bail!("FastestDet takes 3x{INPUT}x{INPUT} pictures, not {c}x{h}x{w}")
        }
        let data = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let side = INPUT / 16;
        let threads = rayon::current_num_threads();
        let pictures = data.par_chunks_exact(3 * INPUT * INPUT);
        // A batch runs its pictures side by side, each on one thread: no hand-offs between layers.
        let maps: Vec<Buffer> = if n > 1 && n >= threads {
            pictures.map(|picture| self.forward_one(picture, 1)).collect()
        } else {
            // On a thread of the pool (rayon::scope puts it there): each layer's split is then
            // work the other threads steal while they still spin, not a job injected from
            // outside the pool that wakes them and puts this thread to sleep until it is done.
            rayon::scope(|_| {
                data.chunks_exact(3 * INPUT * INPUT).map(|picture| self.forward_one(picture, threads)).collect()
            })
        };
        let outputs: Vec<f32> = maps.iter().flat_map(|map| map.iter().copied()).collect();
        self.arena.give(maps);
        Tensor::from_vec(outputs, (n, 5 + self.classes, side, side), x.device())
    }
}

/// A (5 + classes, h, w) map as one vector per cell, cells in row-major order.
pub fn cell_vectors(map: &Tensor) -> Result<(Vec<f32>, [usize; 3])> {
    let (c, h, w) = map.dims3()?;
    Ok((map.permute((1, 2, 0))?.flatten_all()?.to_vec1::<f32>()?, [c, h, w]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(len: usize, seed: u32) -> Vec<f32> {
        zoo_runtime::test_support::pseudo_random(len, seed)
    }

    fn bundled() -> HashMap<String, Tensor> {
        let bytes = zoo_runtime::bundled::file("fastestdet/fastestdet.pth").expect("bundled");
        zoo_runtime::model::pth_tensors(bytes, &Device::Cpu).unwrap()
    }

    /// The network as the authors' PyTorch modules compute it, in candle's NCHW operations on
    /// the state dict as it is (norms not folded, the shuffle as their reshape and permute).
    fn as_pytorch(t: &HashMap<String, Tensor>, x: &Tensor) -> Tensor {
        let get = |name: &str| t[name].to_dtype(DType::F32).unwrap();
        // conv {prefix}{i}, norm {prefix}{i + 1}, then a ReLU if asked.
        let layer = |x: &Tensor, prefix: &str, i: usize, stride: usize, relu: bool| -> Tensor {
            let weight = get(&format!("{prefix}{i}.weight"));
            let (out, per, k, _) = weight.dims4().unwrap();
            let groups = if per == 1 && out > 1 { x.dim(1).unwrap() } else { 1 };
            let y = x.conv2d(&weight, k / 2, stride, 1, groups).unwrap();
            let norm = |f: &str| get(&format!("{prefix}{}.{f}", i + 1)).reshape((1, out, 1, 1)).unwrap();
            let y = y.broadcast_sub(&norm("running_mean")).unwrap();
            let y = y.broadcast_div(&(norm("running_var") + BN_EPS).unwrap().sqrt().unwrap()).unwrap();
            let y = y.broadcast_mul(&norm("weight")).unwrap().broadcast_add(&norm("bias")).unwrap();
            if relu {
                y.relu().unwrap()
            } else {
                y
            }
        };
        let pad = |x: &Tensor| x.pad_with_zeros(2, 1, 1).unwrap().pad_with_zeros(3, 1, 1).unwrap();
        let main = |x: &Tensor, p: &str, s: usize| {
            let m = format!("{p}branch_main.");
            layer(&layer(&layer(x, &m, 0, 1, true), &m, 3, s, false), &m, 5, 1, true)
        };
        // After a ReLU, zero padding stands in for -inf.
        let mut x = pad(&layer(x, "backbone.first_conv.", 0, 2, true)).max_pool2d_with_stride(3, 2).unwrap();
        let mut levels = Vec::new();
        for (stage, units) in [("stage2", 4), ("stage3", 8), ("stage4", 4)] {
            for i in 0..units {
                let p = format!("backbone.{stage}.{i}.");
                x = if i == 0 {
                    let proj = format!("{p}branch_proj.");
                    let reduced = layer(&layer(&x, &proj, 0, 2, false), &proj, 2, 1, true);
                    Tensor::cat(&[reduced, main(&x, &p, 2)], 1).unwrap()
                } else {
                    let (_, c, h, w) = x.dims4().unwrap();
                    let split = x.reshape((c / 2, 2, h * w)).unwrap().permute((1, 0, 2)).unwrap();
                    let half = |j: usize| split.get(j).unwrap().reshape((1, c / 2, h, w)).unwrap();
                    Tensor::cat(&[half(0), main(&half(1), &p, 1)], 1).unwrap()
                };
            }
            levels.push(x.clone());
        }
        let (h, w) = (levels[1].dim(2).unwrap(), levels[1].dim(3).unwrap());
        let fine = pad(&levels[0]).avg_pool2d_with_stride(3, 2).unwrap();
        let coarse = levels[2].upsample_nearest2d(h, w).unwrap();
        let neck = Tensor::cat(&[fine, levels[1].clone(), coarse], 1).unwrap();
        let x = layer(&neck, "SPP.Conv1x1.conv1x1.", 0, 1, true);
        let branch = |name: &str, depth: usize| {
            (0..depth).fold(x.clone(), |y, i| layer(&y, &format!("SPP.{name}."), 3 * i, 1, true))
        };
        let cat = Tensor::cat(&[branch("S1", 1), branch("S2", 2), branch("S3", 3)], 1).unwrap();
        let y = (layer(&cat, "SPP.output.", 0, 1, false) + &x).unwrap().relu().unwrap();
        let y = layer(&y, "detect_head.conv1x1.conv1x1.", 0, 1, true);
        let head = |name: &str| {
            let p = format!("detect_head.{name}_layers.conv5x5.");
            layer(&layer(&y, &p, 0, 1, true), &p, 3, 1, false)
        };
        let obj = candle_nn::ops::sigmoid(&head("obj")).unwrap();
        let cls = candle_nn::ops::softmax(&head("cls"), 1).unwrap();
        Tensor::cat(&[obj, head("reg"), cls], 1).unwrap()
    }

    /// The NHWC pass, with its blocks, permuted weights and fused stores, against the
    /// PyTorch-shaped graph, on a picture of noise and one of flat colour, one at a time and as
    /// a batch.
    #[test]
    fn the_network_matches_its_pytorch_graph() {
        let tensors = bundled();
        let net = FastestDet::load(&tensors).unwrap();
        let noise: Vec<f32> = random(3 * INPUT * INPUT, 7).iter().map(|v| v * 0.5 + 0.5).collect();
        let flat = vec![0.3f32; 3 * INPUT * INPUT];
        let pictures = [noise, flat].map(|p| Tensor::from_vec(p, (1, 3, INPUT, INPUT), &Device::Cpu).unwrap());
        let want = pictures.clone().map(|p| as_pytorch(&tensors, &p));
        // A batch at least as large as the pool runs its pictures side by side, one thread each;
        // one picture alone runs each layer on every thread.
        let n = rayon::current_num_threads().max(2);
        let batch = Tensor::cat(&(0..n).map(|i| pictures[i % 2].clone()).collect::<Vec<_>>(), 0).unwrap();
        let together = net.forward(&batch).unwrap();
        let alone = pictures.clone().map(|p| net.forward(&p).unwrap());
        let got =
            (0..n).map(|i| (together.narrow(0, i, 1).unwrap(), i % 2)).chain([0, 1].map(|i| (alone[i].clone(), i)));
        for (got, i) in got {
            let want = &want[i];
            assert_eq!(got.dims(), want.dims());
            // Rounding differs in the last bits, relative to each output's scale (the box terms
            // run to about 10 on noise).
            for (name, from, len) in [("objectness", 0, 1), ("box", 1, 4), ("class", 5, 80)] {
                let max =
                    |t: Tensor| t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
                let theirs = want.narrow(1, from, len).unwrap();
                let diff = max((got.narrow(1, from, len).unwrap() - &theirs).unwrap());
                let scale = max(theirs).max(1.0);
                assert!(diff <= 1e-4 * scale, "{name}: max |ours - PyTorch graph| = {diff} at scale {scale}");
            }
        }
    }

    #[test]
    fn state_dicts_of_another_shape_are_refused_at_load() {
        let bytes = zoo_runtime::bundled::file("fastestdet/fastestdet.pth").expect("bundled");
        let tensors = zoo_runtime::model::pth_tensors(bytes, &Device::Cpu).unwrap();
        assert_eq!(FastestDet::load(&tensors).unwrap().classes, 80);
        let mut missing = tensors.clone();
        missing.remove("SPP.S2.3.weight");
        let error = FastestDet::load(&missing).err().unwrap().to_string();
        assert!(error.contains("no tensor SPP.S2.3.weight"), "{error}");
        // A 1x1 convolution that takes 200 channels where the one before gives 96.
        let mut wrong = tensors.clone();
        wrong.insert("SPP.output.0.weight".into(), Tensor::zeros((96, 200, 1, 1), DType::F32, &Device::Cpu).unwrap());
        let error = FastestDet::load(&wrong).err().unwrap().to_string();
        assert!(error.contains("the SPP output takes 200 channels but is given 288"), "{error}");
        // A 7x7 kernel where the network has 5x5, and a norm whose variance is negative.
        let mut wide = tensors.clone();
        wide.insert("SPP.S1.0.weight".into(), Tensor::zeros((96, 1, 7, 7), DType::F32, &Device::Cpu).unwrap());
        let error = FastestDet::load(&wide).err().unwrap().to_string();
        assert!(error.contains("SPP.S1.0: a 96x1x7x7 convolution where FastestDet has a 5x5 one"), "{error}");
        let mut negative = tensors.clone();
        negative.insert(
            "detect_head.cls_layers.conv5x5.4.running_var".into(),
            (Tensor::ones(80, DType::F32, &Device::Cpu).unwrap() * -1.0).unwrap(),
        );
        let error = FastestDet::load(&negative).err().unwrap().to_string();
        assert!(error.contains("not finite"), "{error}");
    }

    #[test]
    fn pools_match_torchs_padding_rules() {
        let dev = Device::Cpu;
        for (h, w, c) in [(5, 4, 3), (1, 1, 2), (6, 7, 17)] {
            let data = random(h * w * c, 4);
            let t = Tensor::from_vec(data.clone(), (1, h, w, c), &dev).unwrap().permute((0, 3, 1, 2)).unwrap();
            let padded = t.pad_with_zeros(2, 1, 1).unwrap().pad_with_zeros(3, 1, 1).unwrap();
            let (oh, ow) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
            // Written at an offset of wider rows, as into the neck.
            let (stride, offset) = (c + 5, 2);
            let nhwc =
                |t: Tensor| -> Vec<f32> { t.permute((0, 2, 3, 1)).unwrap().flatten_all().unwrap().to_vec1().unwrap() };
            for (max, threads) in [(false, 1), (true, 2)] {
                let mut out = vec![f32::NAN; oh * ow * stride];
                pool(&data, (h, w, c), max, &mut out, stride, offset, threads);
                // Zero padding stands in for -inf only for inputs at or above zero, as after a ReLU.
                let theirs = if max {
                    let shifted = t.affine(1.0, 10.0).unwrap().pad_with_zeros(2, 1, 1).unwrap();
                    let shifted = shifted.pad_with_zeros(3, 1, 1).unwrap().max_pool2d_with_stride(3, 2).unwrap();
                    nhwc(shifted.affine(1.0, -10.0).unwrap())
                } else {
                    nhwc(padded.avg_pool2d_with_stride(3, 2).unwrap())
                };
                for (pixel, want) in out.chunks_exact(stride).zip(theirs.chunks_exact(c)) {
                    assert!(
                        pixel[..offset].iter().chain(&pixel[offset + c..]).all(|v| v.is_nan()),
                        "wrote outside its columns"
                    );
                    assert!(
                        pixel[offset..offset + c].iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5),
                        "{h}x{w} max {max}"
                    );
                }
            }
        }
    }
}
