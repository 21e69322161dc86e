//! The persistent single-sequence decode step (`decode_step_*`, opt-in with
//! `BITNET_CUDA_MEGA=1`): its per-layer table and phase stamps.

use super::*;

/// The persistent decode step's per-layer table and launch shape (see `decode_step_body` in
/// the kernels).
pub(super) struct Mega {
    pub(super) table: CudaSlice<u64>,
    pub(super) grid: u32,
    pub(super) smem: u32,
    /// Whether it runs (`BITNET_CUDA_MEGA=1`, [`CudaModel::set_persistent_decode`]); cleared
    /// for good when the driver refuses the launch.
    pub(super) on: std::sync::atomic::AtomicBool,
    /// Where the two weight stages start in dynamic shared memory (after attention's
    /// scratch), and each one's length in 16-byte units.
    pub(super) stage: (u32, u32),
    /// The grid barrier: `[arrivals, generation]`.
    pub(super) bar: CudaSlice<u32>,
    /// `BITNET_CUDA_MEGA_STAMPS=1`: block 0's timer at each barrier's arrival and departure,
    /// then per product the running sums of its norm, wait and product times; summed per phase
    /// over the steps and printed when the model is dropped.
    pub(super) stamps: Option<(CudaSlice<u64>, Mutex<Stamps>)>,
}

/// Summed phase times of the persistent step: each phase's own work and its barrier wait (block
/// 0's view), and the number of steps.
pub(super) type Stamps = ([u64; 6], [u64; 6], u64, [u64; 12]);

impl Mega {
    /// Adds the last step's phase times (after the step has finished).
    pub(super) fn settle_stamps(&self, gpu: &Gpu, layers: usize) -> Result<(), CudaError> {
        let Some((buf, totals)) = &self.stamps else {
            return Ok(());
        };
        // Start, then per barrier (the embedding's, then five per layer) arrival and departure.
        let n = 1 + 2 * (1 + 5 * layers);
        let mut host = vec![0u64; n + 12];
        gpu.stream.memcpy_dtoh(buf, &mut host)?;
        gpu.sync()?;
        if let Ok(mut t) = totals.lock() {
            t.3.copy_from_slice(&host[n..]);
            for (i, w) in host[1..n].chunks_exact(2).enumerate() {
                let phase = if i == 0 { 0 } else { 1 + (i - 1) % 5 };
                t.0[phase] += w[0].saturating_sub(host[2 * i]);
                t.1[phase] += w[1].saturating_sub(w[0]);
            }
            t.2 += 1;
        }
        Ok(())
    }
}

impl Drop for Mega {
    fn drop(&mut self) {
        let Some((_, totals)) = &self.stamps else {
            return;
        };
        let Ok(t) = totals.lock() else { return };
        let steps = t.2 as f64;
        if steps == 0.0 {
            return;
        }
        let names = ["embed", "qkv", "attention", "o", "gate/up", "down"];
        let all: u64 = t.0.iter().chain(&t.1).sum();
        eprintln!(
            "persistent decode step, {} steps: {:.1} us per step (block 0: work | barrier)",
            t.2,
            all as f64 / steps / 1e3
        );
        for ((n, w), b) in names.iter().zip(t.0).zip(t.1) {
            eprintln!(
                "  {n:<10} {:>8.1} | {:>8.1} us per step",
                w as f64 / steps / 1e3,
                b as f64 / steps / 1e3
            );
        }
        for (n, v) in ["qkv", "o", "gate/up", "down"]
            .iter()
            .zip(t.3.chunks_exact(3))
        {
            eprintln!(
                "  {n:<10} norm {:.1} wait {:.1} product {:.1} us per step",
                v[0] as f64 / steps / 1e3,
                v[1] as f64 / steps / 1e3,
                v[2] as f64 / steps / 1e3
            );
        }
    }
}

impl Mega {
    /// The table and launch shape, or `None` where a row is wider than the fused kernels take
    /// or the driver cannot place the blocks. It runs only once turned on (`BITNET_CUDA_MEGA=1`
    /// or [`CudaModel::set_persistent_decode`]): measured slower than one kernel per
    /// operation (BENCHMARKS.md, v10). `BITNET_CUDA_MEGA_GRID=N`
    /// caps the grid at N blocks (for measurements).
    pub(super) fn build(
        gpu: &Gpu,
        k: &Kernel,
        c: &ModelConfig,
        layers: &[DevLayer],
        embed: &Table,
    ) -> Result<Option<Self>, CudaError> {
        let widths = [c.hidden_size, c.q_dim(), c.intermediate_size];
        if matches!(embed, Table::I8 { .. })
            || layers.is_empty()
            || widths.iter().any(|&w| w > FUSED_MAX_COLS)
        {
            return Ok(None);
        }
        // Two blocks per SM where their shared memory fits, else one: attention's scratch and
        // two stages, each holding one block's strips of the largest product.
        let sms = gpu.sm_count();
        let attn = pack::round_up(attn_smem(c, Kernel::WAVE_BLOCK), 16);
        let cap = std::env::var("BITNET_CUDA_MEGA_GRID")
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(u32::MAX);
        let mut shape = None;
        for per_sm in [2, 1] {
            let grid = (sms * per_sm).min(cap).max(1) as usize;
            let stage = layers
                .iter()
                .flat_map(|l| [&l.qkv, &l.o, &l.gate_up, &l.down])
                .map(|w| w.rows.div_ceil(STRIP).div_ceil(grid) * w.kgroups * 512)
                .max()
                .unwrap_or(0);
            let smem = attn + 2 * stage;
            if k.allow_smem(smem).is_ok()
                && k.resident(gpu, Kernel::WAVE_BLOCK, smem) as usize >= grid
            {
                shape = Some((grid as u32, smem, attn, stage / 16));
                break;
            }
        }
        let Some((grid, smem, attn, stage_len)) = shape else {
            return Ok(None);
        };
        let st = &gpu.stream;
        let lin = |w: &DevTernary| {
            [
                ptr(&w.words, st),
                ptr(&w.scales, st),
                w.rows as u64 | (w.kgroups as u64) << 32,
            ]
        };
        let mut table = Vec::with_capacity(16 * layers.len());
        for l in layers {
            for w in [&l.qkv, &l.o, &l.gate_up, &l.down] {
                table.extend(lin(w));
            }
            for n in [&l.attn_norm, &l.attn_sub_norm, &l.ffn_norm, &l.ffn_sub_norm] {
                table.push(ptr(n, st));
            }
        }
        if std::env::var("BITNET_CUDA_VERBOSE").is_ok_and(|v| v == "1") {
            eprintln!(
                "persistent decode step: {grid} blocks of {} threads, {smem} bytes of shared memory each",
                Kernel::WAVE_BLOCK
            );
        }
        let stamps = if std::env::var("BITNET_CUDA_MEGA_STAMPS").is_ok_and(|v| v == "1") {
            Some((
                gpu.zeros(1 + 2 * (1 + 5 * layers.len()) + 12)?,
                Mutex::new(([0; 6], [0; 6], 0, [0; 12])),
            ))
        } else {
            None
        };
        Ok(Some(Self {
            table: gpu.upload(&table)?,
            grid,
            smem: smem as u32,
            on: std::sync::atomic::AtomicBool::new(
                std::env::var("BITNET_CUDA_MEGA").is_ok_and(|v| v == "1"),
            ),
            stage: (attn as u32, stage_len as u32),
            bar: gpu.zeros(2)?,
            stamps,
        }))
    }
}
