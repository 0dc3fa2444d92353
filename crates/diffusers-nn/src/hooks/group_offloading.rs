//! Where a model's blocks keep their weights while they run (diffusers'
//! `hooks/group_offloading.py` and the leaf-level hooks of `enable_sequential_cpu_offload`).
//!
//! An offloaded model's parameters are lazy: released to their weight files
//! (`diffusers_core::weights::offload::release`), each reads its tensor again the first time it
//! is used. The blocks stay that way; [`HookRegistry::run_blocks`](super::HookRegistry::run_blocks)
//! runs a loaded copy of each block (or group of blocks) and drops it afterwards, so at most one
//! block (sequential) or two groups (group offload with prefetch) are in memory at a time.

use burn::module::Module;
use burn::prelude::*;
use diffusers_core::weights::offload::materialize;

use super::BlockStates;

/// How the blocks run through [`HookRegistry::run_blocks`](super::HookRegistry::run_blocks)
/// keep their weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockOffload {
    /// Each block's layers are loaded one by one as the block uses them and freed when the
    /// block ends (diffusers' `enable_sequential_cpu_offload`, which moves each leaf layer).
    Sequential,
    /// Groups of `blocks_per_group` blocks are loaded whole before the group runs and freed
    /// after it (diffusers' `enable_group_offload(offload_type="block_level",
    /// num_blocks_per_group=N)`); with `prefetch`, the next group loads on another thread
    /// while the current one computes (diffusers' `use_stream=True`).
    Group {
        /// Blocks per group (at least 1).
        blocks_per_group: usize,
        /// Load the next group while the current one runs.
        prefetch: bool,
    },
}

fn load_group<B: Backend, M: Module<B>>(blocks: &[M]) -> Vec<M> {
    blocks
        .iter()
        .map(|b| {
            let live = b.clone();
            materialize(&live);
            live
        })
        .collect()
}

/// Runs `blocks` in order through `run(index, block, states)` under `offload`.
pub(crate) fn run<B, M>(
    offload: Option<BlockOffload>,
    blocks: &[M],
    states: BlockStates<B>,
    run: impl Fn(usize, &M, BlockStates<B>) -> BlockStates<B>,
) -> BlockStates<B>
where
    B: Backend,
    M: Module<B> + Sync,
{
    match offload {
        None => blocks
            .iter()
            .enumerate()
            .fold(states, |s, (i, b)| run(i, b, s)),
        Some(BlockOffload::Sequential) => {
            blocks.iter().enumerate().fold(states, |s, (i, b)| {
                // A clone of a released block is lazy too: its layers load as the block uses
                // them, and go with the clone.
                let live = b.clone();
                run(i, &live, s)
            })
        }
        Some(BlockOffload::Group {
            blocks_per_group,
            prefetch,
        }) => {
            let n = blocks_per_group.max(1);
            let groups: Vec<&[M]> = blocks.chunks(n).collect();
            let run_group = |g: usize, live: Vec<M>, s: BlockStates<B>| {
                live.iter()
                    .enumerate()
                    .fold(s, |s, (j, b)| run(g * n + j, b, s))
            };
            if !prefetch {
                return groups
                    .iter()
                    .enumerate()
                    .fold(states, |s, (g, blocks)| run_group(g, load_group(blocks), s));
            }
            std::thread::scope(|scope| {
                let mut states = states;
                let mut next = groups.first().map(|g| load_group(g));
                for g in 0..groups.len() {
                    let live = next.take().unwrap_or_default();
                    let pending = groups.get(g + 1).map(|blocks| {
                        let blocks: &[M] = blocks;
                        scope.spawn(move || load_group(blocks))
                    });
                    states = run_group(g, live, states);
                    next = pending.map(|h| match h.join() {
                        Ok(v) => v,
                        // The loading thread only reads weights; if it died, load here.
                        Err(_) => load_group(groups[g + 1]),
                    });
                }
                states
            })
        }
    }
}
