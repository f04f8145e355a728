package e2e

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluicelb/sluice/cmd/sluice/netlab"
)

// TestSystemdNotify: started as systemd starts a Type=notify unit with a
// watchdog, the daemon says READY=1, pings WATCHDOG=1 about every half
// interval, stops pinging while it is frozen (systemd would restart it),
// and says STOPPING=1 when it stops.
func TestSystemdNotify(t *testing.T) {
	lab := newLab(t, netlab.LabOptions{Backends: 1})
	sock := filepath.Join(t.TempDir(), "notify")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	msgs := make(chan string, 1000)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := ln.Read(buf)
			if err != nil {
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	dir := t.TempDir()
	cmd := lab.LB.Command(t.Context(), sluiceBin, daemonArgs(lab, lab.LB, dir)...)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=400000")
	d := startDaemonCmd(t, cmd, dir)
	d.mustCLI(t, "vip", "add", vipTCP)
	d.mustCLI(t, append([]string{"backend", "add", vipTCP, lab.Backends[0].Addr.Addr().String()}, fastCheck...)...)
	count := func(what string, within time.Duration) int {
		n := 0
		end := time.After(within)
		for {
			select {
			case m := <-msgs:
				if strings.Contains(m, what) {
					n++
				}
			case <-end:
				return n
			}
		}
	}
	if n := count("READY=1", 2*time.Second); n != 1 {
		t.Fatalf("READY=1 sent %d times", n)
	}
	if n := count("WATCHDOG=1", time.Second); n < 3 {
		t.Fatalf("%d watchdog pings in 1 s with a 400 ms watchdog", n)
	}
	d.cmd.Process.Signal(syscall.SIGSTOP)
	count("WATCHDOG=1", 50*time.Millisecond) // one already on its way
	frozen := count("WATCHDOG=1", time.Second)
	d.cmd.Process.Signal(syscall.SIGCONT)
	if frozen != 0 {
		t.Fatalf("%d pings while the daemon was frozen", frozen)
	}
	if n := count("WATCHDOG=1", time.Second); n < 3 {
		t.Fatalf("%d pings in 1 s after it thawed", n)
	}
	d.stop()
	if n := count("STOPPING=1", time.Second); n != 1 {
		t.Fatalf("STOPPING=1 sent %d times", n)
	}
}

// TestSystemdUnit: dist/sluice.service verifies with systemd-analyze (its
// binary pointed at the one under test), its sandbox scores an exposure of
// at most 4.0 ("OK"; the threshold is in tenths), and it keeps the directives the daemon relies on.
func TestSystemdUnit(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("systemd-analyze is missing (apt-get install systemd)")
		}
		t.Skip("systemd-analyze is missing")
	}
	raw, err := os.ReadFile("../../dist/sluice.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := string(raw)
	for _, want := range []string{"StartLimitIntervalSec=0", "Type=notify", "WatchdogSec=", "ProtectSystem=strict",
		"ReadWritePaths=/var/lib/sluice /run/sluice /sys/fs/bpf", "CapabilityBoundingSet=", "SystemCallFilter=", "RestrictAddressFamilies="} {
		if !strings.Contains(unit, want) {
			t.Errorf("the unit lacks %s", want)
		}
	}
	path := filepath.Join(t.TempDir(), "sluice.service")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(unit, "/usr/local/bin/sluice", sluiceBin)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(analyze, "verify", path).CombinedOutput(); err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	out, err := exec.Command(analyze, "security", "--offline=yes", "--threshold=40", path).CombinedOutput()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	t.Log(lines[len(lines)-1])
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
}
