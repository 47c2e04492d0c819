use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::io::{Disk, SimDisk};

fn write_records(disk: &Arc<dyn Disk>, payloads: &[Vec<u8>], segment_bytes: u64) {
    let (mut wal, _) = Wal::open(disk.clone(), "wal", 0, |_| Ok(())).unwrap();
    wal.set_segment_bytes_max(segment_bytes);
    for p in payloads {
        let mut buf = Vec::new();
        let lsn = wal.stage(&mut buf, 1, RecordType::Batch, p);
        wal.write_and_sync(lsn, &buf).unwrap();
    }
}

/// (lsn, payload) of every replayed record.
type Replayed = Vec<(u64, Vec<u8>)>;

fn replay(disk: &Arc<dyn Disk>, after: u64) -> Result<(Replayed, RecoveryReport), WalError> {
    let mut got = Vec::new();
    let (_, report) = Wal::open(disk.clone(), "wal", after, |r| {
        got.push((r.lsn, r.payload.to_vec()));
        Ok(())
    })?;
    Ok((got, report))
}

#[test]
fn records_survive_reopen_across_segments() {
    let disk: Arc<dyn Disk> = Arc::new(SimDisk::new(1));
    let payloads: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 100]).collect();
    write_records(&disk, &payloads, 1000);
    let (got, report) = replay(&disk, 0).unwrap();
    assert!(report.segments > 5, "{report:?}");
    assert_eq!(got.len(), 100);
    assert!(got.iter().enumerate().all(|(i, (lsn, p))| *lsn == i as u64 + 1 && p == &payloads[i]));
    // Replay after a checkpoint LSN skips what the checkpoint holds.
    let (got, _) = replay(&disk, 60).unwrap();
    assert_eq!(got.first().map(|g| g.0), Some(61));
}

#[test]
fn trimming_keeps_the_tail_and_lsns_continue() {
    let disk: Arc<dyn Disk> = Arc::new(SimDisk::new(1));
    let payloads: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 100]).collect();
    write_records(&disk, &payloads, 500);
    let (mut wal, _) = Wal::open(disk.clone(), "wal", 40, |_| Ok(())).unwrap();
    let before = wal.segment_count();
    assert!(wal.trim_through(40).unwrap() > 0);
    assert!(wal.segment_count() < before);
    let mut buf = Vec::new();
    assert_eq!(wal.stage(&mut buf, 1, RecordType::Batch, b"next"), 51);
    wal.write_and_sync(51, &buf).unwrap();
    let (got, _) = replay(&disk, 40).unwrap();
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), (41..=51).collect::<Vec<_>>());
}

#[test]
fn fsync_failure_is_reported_as_fatal() {
    let sim = SimDisk::new(3);
    let disk: Arc<dyn Disk> = Arc::new(sim.clone());
    let (mut wal, _) = Wal::open(disk, "wal", 0, |_| Ok(())).unwrap();
    sim.fail_next_syncs(1);
    let mut buf = Vec::new();
    wal.stage(&mut buf, 1, RecordType::Batch, b"x");
    assert!(matches!(wal.write_and_sync(1, &buf), Err(WalError::FsyncFailed { .. })));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Damage anywhere: recovery yields a prefix of what was written, byte for byte, or reports
    /// corruption. It never yields wrong or reordered data.
    #[test]
    fn damage_is_detected_never_misread(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..20),
        at: usize, bit in 0u8..8, truncate: bool,
    ) {
        let sim = SimDisk::new(9);
        let disk: Arc<dyn Disk> = Arc::new(sim.clone());
        write_records(&disk, &payloads, u64::MAX);
        let path = "wal/00000000000000000001.wal";
        let mut bytes = disk.read(path).unwrap();
        let at = at % bytes.len();
        if truncate {
            disk.truncate(path, at as u64).unwrap();
        } else {
            bytes[at] ^= 1 << bit;
            let mut f = disk.create(path).unwrap();
            f.append(&bytes).unwrap();
            f.sync().unwrap();
        }
        match replay(&disk, 0) {
            Ok((got, _)) => {
                prop_assert!(got.len() <= payloads.len());
                for (i, (lsn, p)) in got.iter().enumerate() {
                    prop_assert_eq!(*lsn, i as u64 + 1);
                    prop_assert_eq!(p, &payloads[i]);
                }
                if !truncate {
                    // A flipped bit may only cost the last record (a torn tail).
                    prop_assert!(got.len() + 1 >= payloads.len());
                }
            }
            Err(WalError::Corruption { .. }) => prop_assert!(!truncate, "a truncation is a torn tail, not corruption"),
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }
}

#[test]
fn flipped_reads_never_truncate_acknowledged_records() {
    use crate::io::SimDiskFaults;
    let (mut refused, mut clean) = (0, 0);
    for seed in 0..300 {
        let sim = SimDisk::new(seed);
        let disk: Arc<dyn Disk> = Arc::new(sim.clone());
        let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 40]).collect();
        write_records(&disk, &payloads, u64::MAX);
        sim.set_faults(SimDiskFaults { read_bitflip_probability: 0.5, ..Default::default() });
        match replay(&disk, 0) {
            Ok((got, report)) => {
                assert_eq!(got.len(), 10, "seed {seed}: a transient flip cost records");
                assert_eq!(report.truncated_tail_bytes, 0, "seed {seed}");
                clean += 1;
            }
            Err(WalError::Corruption { .. }) => refused += 1,
            Err(e) => panic!("seed {seed}: {e}"),
        }
        sim.set_faults(SimDiskFaults::default());
        assert_eq!(replay(&disk, 0).unwrap().0.len(), 10, "seed {seed}: data on disk was changed");
    }
    assert!(clean > 100, "{clean} clean recoveries");
    eprintln!("flipped reads: {clean} recovered everything, {refused} refused to serve");
}
