//! System figures: resident memory and CPU temperature, read from Linux's `/proc` and
//! `/sys`. Every reader returns `None` where the figure is unavailable (another OS, a board
//! without a thermal zone, an unreadable file); none fails or panics.

use std::io::Read;
use std::path::Path;

/// Largest number of bytes read from any one `/proc` or `/sys` file.
const MAX_FILE_BYTES: u64 = 16 * 1024;

/// Thermal zones looked at, at most.
const MAX_THERMAL_ZONES: usize = 32;

/// The figures a report carries about the machine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SystemFigures {
    /// Resident memory of this process, KiB.
    pub rss_kib: Option<u32>,
    /// CPU temperature, millidegrees Celsius.
    pub cpu_temp_milli_c: Option<i32>,
}

impl SystemFigures {
    /// Reads both figures now.
    pub fn read() -> SystemFigures {
        SystemFigures {
            rss_kib: rss_kib(),
            cpu_temp_milli_c: cpu_temp_milli_c(),
        }
    }
}

fn read_small(path: &Path) -> Option<String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_FILE_BYTES)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// Resident set size of this process in KiB (`VmRSS` in `/proc/self/status`).
pub fn rss_kib() -> Option<u32> {
    parse_vm_rss(&read_small(Path::new("/proc/self/status"))?)
}

fn parse_vm_rss(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    let kib = match words.next() {
        Some("kB") | None => value,
        Some("mB") => value.saturating_mul(1024),
        _ => return None,
    };
    Some(u32::try_from(kib).unwrap_or(u32::MAX))
}

/// CPU temperature in millidegrees Celsius from `/sys/class/thermal/thermal_zone*/temp`:
/// the first zone whose `type` names the CPU or SoC (`cpu-thermal` on a Raspberry Pi,
/// `x86_pkg_temp`, `soc_thermal`…), else the lowest-numbered readable zone.
pub fn cpu_temp_milli_c() -> Option<i32> {
    cpu_temp_in(Path::new("/sys/class/thermal"))
}

fn cpu_temp_in(root: &Path) -> Option<i32> {
    let mut zones: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name();
            let n: u32 = name.to_str()?.strip_prefix("thermal_zone")?.parse().ok()?;
            Some((n, e.path()))
        })
        .take(MAX_THERMAL_ZONES)
        .collect();
    zones.sort();
    let read_temp =
        |dir: &Path| -> Option<i32> { read_small(&dir.join("temp"))?.trim().parse().ok() };
    let is_cpu = |dir: &Path| {
        read_small(&dir.join("type")).is_some_and(|t| {
            let t = t.to_ascii_lowercase();
            ["cpu", "soc", "x86_pkg", "core"]
                .iter()
                .any(|k| t.contains(k))
        })
    };
    zones
        .iter()
        .filter(|(_, d)| is_cpu(d))
        .find_map(|(_, d)| read_temp(d))
        .or_else(|| zones.iter().find_map(|(_, d)| read_temp(d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_parses_and_odd_text_is_none() {
        let status = "Name:\tperch\nVmPeak:\t  10000 kB\nVmRSS:\t    5120 kB\nThreads: 1\n";
        assert_eq!(parse_vm_rss(status), Some(5120));
        assert_eq!(parse_vm_rss("VmRSS: lots kB\n"), None);
        assert_eq!(parse_vm_rss("VmRSS: 12 parsecs\n"), None);
        assert_eq!(parse_vm_rss(""), None);
        assert_eq!(parse_vm_rss("VmRSS: 99999999999 kB"), Some(u32::MAX));
    }

    #[test]
    fn this_process_has_resident_memory_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(rss_kib().is_some_and(|k| k > 0));
        }
        // Whatever the machine, reading never fails.
        let _ = SystemFigures::read();
    }

    #[test]
    fn the_cpu_zone_wins_over_a_lower_numbered_other_zone() {
        let dir = tempfile::tempdir().unwrap();
        let zone = |n: u32, kind: &str, temp: &str| {
            let d = dir.path().join(format!("thermal_zone{n}"));
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("type"), kind).unwrap();
            std::fs::write(d.join("temp"), temp).unwrap();
        };
        assert_eq!(cpu_temp_in(dir.path()), None);
        zone(0, "acpitz\n", "27800\n");
        assert_eq!(cpu_temp_in(dir.path()), Some(27_800));
        zone(1, "cpu-thermal\n", "48312\n");
        zone(2, "x86_pkg_temp\n", "garbage\n");
        std::fs::create_dir(dir.path().join("cooling_device0")).unwrap();
        assert_eq!(cpu_temp_in(dir.path()), Some(48_312));
        assert_eq!(cpu_temp_in(&dir.path().join("missing")), None);
    }
}
