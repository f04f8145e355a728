package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/state"
)

// TestCorruptState: a state.db that is truncated, bit-flipped or replaced
// stops the daemon at start with a message that names the file and the
// fault (never a panic), before anything is attached; an offline
// `sluice backup restore --state-dir` then brings it back to the exact
// state of the backup, and `--latest` to the newest archived one.
func TestCorruptState(t *testing.T) {
	lab, d := labWithDaemon(t, 2)
	d.mustCLI(t, "vip", "add", vipTCP)
	for _, b := range lab.Backends {
		d.mustCLI(t, append([]string{"backend", "add", vipTCP, b.Addr.Addr().String()}, fastCheck...)...)
	}
	d.mustCLI(t, "vip", "add", vipUDP, "--forward", "dsr")
	backup := filepath.Join(t.TempDir(), "backup.json")
	d.mustCLI(t, "backup", "save", backup)
	want := d.status(t)
	d.stop()
	dir := d.stateDir
	pristine, err := os.ReadFile(filepath.Join(dir, state.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	corruptions := []struct {
		name  string
		apply func([]byte) []byte
		fault string
	}{
		{"truncated", func(b []byte) []byte { return b[:len(b)/3] }, "corrupt"},
		{"bit-flipped", func(b []byte) []byte {
			// Every copy of a backend's address, old pages included.
			return bytes.ReplaceAll(b, []byte(`"10.77.0.11"`), []byte(`"10.77.0.q1"`))
		}, "checksum mismatch"},
		{"replaced", func([]byte) []byte { return []byte("this is not a state file\n") }, "corrupt"},
	}
	for _, c := range corruptions {
		t.Run(c.name, func(t *testing.T) {
			if err := os.WriteFile(filepath.Join(dir, state.StateFile), c.apply(bytes.Clone(pristine)), 0o600); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			out, err := lab.LB.Command(ctx, sluiceBin, daemonArgs(lab, lab.LB, dir)...).CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) {
				t.Fatalf("daemon on a %s state.db: %v\n%s", c.name, err, out)
			}
			for _, s := range []string{filepath.Join(dir, state.StateFile), c.fault, "backup restore --state-dir"} {
				if !strings.Contains(string(out), s) {
					t.Errorf("message lacks %q:\n%s", s, out)
				}
			}
			if strings.Contains(string(out), "panic") || strings.Contains(string(out), "goroutine") {
				t.Fatalf("the daemon panicked:\n%s", out)
			}
			if strings.Contains(string(out), "attached xdp program") {
				t.Fatalf("the data plane was attached before the state was read:\n%s", out)
			}
			out2 := d.mustCLI(t, "backup", "restore", "--state-dir", dir, backup)
			if !strings.Contains(out2, "moved to "+filepath.Join(dir, state.StateFile)+".corrupt-") {
				t.Fatalf("restore did not move the corrupt file aside:\n%s", out2)
			}
			d2 := startDaemon(t, lab, dir)
			got := d2.waitStatus(t, "the restored state", func(s api.Status) bool { return sameVIPs(s, want) })
			if got.Revision != want.Revision {
				t.Fatalf("restored revision %d, the backup's is %d", got.Revision, want.Revision)
			}
			d2.stop()
		})
	}
	// --latest: the newest archived state is the one before the UDP VIP.
	out := d.mustCLI(t, "backup", "restore", "--state-dir", dir, "--latest")
	if !strings.Contains(out, "archive/state-") {
		t.Fatalf("restore --latest: %s", out)
	}
	d3 := startDaemon(t, lab, dir)
	if st := d3.status(t); len(st.VIPs) != 1 || st.VIPs[0].VIP != vipTCP {
		t.Fatalf("after --latest: %+v", st.VIPs)
	}
}

// sameVIPs compares two statuses' VIPs and backends, as configured.
func sameVIPs(a, b api.Status) bool {
	key := func(s api.Status) string {
		var out []string
		for _, v := range s.VIPs {
			out = append(out, v.VIP+" "+v.Forward+" "+v.Policy)
			for _, b := range v.Backends {
				out = append(out, "  "+b.Addr)
			}
		}
		j, _ := json.Marshal(out)
		return string(j)
	}
	return key(a) == key(b)
}
