package netlab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// BIRD is a real BIRD 2 routing daemon (Debian's bird2), run in the
// foreground with its own config, control socket and log.
type BIRD struct {
	Dir    string // config, socket and log
	socket string
	cmd    *exec.Cmd
	done   chan error
	stop   sync.Once
}

// BIRDBinary is the routing daemon the lab runs.
const BIRDBinary = "bird"

// StartBIRD writes conf to a new directory under dir and starts BIRD on
// it; in, when non-nil, runs it in a lab host's namespace, otherwise it
// runs in this one (tests that stay on loopback). It waits until the
// control socket answers. Stop it with Stop.
func StartBIRD(ctx context.Context, dir string, in *Host, conf string) (*BIRD, error) {
	if _, err := exec.LookPath(BIRDBinary); err != nil {
		return nil, fmt.Errorf("bird is missing: apt-get install bird2")
	}
	d, err := os.MkdirTemp(dir, "bird-")
	if err != nil {
		return nil, err
	}
	b := &BIRD{Dir: d, socket: filepath.Join(d, "bird.ctl"), done: make(chan error, 1)}
	cf := filepath.Join(d, "bird.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	args := []string{"-f", "-c", cf, "-s", b.socket, "-P", filepath.Join(d, "bird.pid")}
	if in != nil {
		b.cmd = in.Command(context.Background(), BIRDBinary, args...)
	} else {
		b.cmd = exec.Command(BIRDBinary, args...)
	}
	logf, err := os.Create(filepath.Join(d, "bird.log"))
	if err != nil {
		return nil, err
	}
	b.cmd.Stdout, b.cmd.Stderr = logf, logf
	if err := b.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start bird: %w", err)
	}
	go func() { b.done <- b.cmd.Wait(); logf.Close() }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := b.Show(ctx, "status"); err == nil {
			return b, nil
		}
		select {
		case err := <-b.done:
			log, _ := os.ReadFile(filepath.Join(d, "bird.log"))
			return nil, fmt.Errorf("bird exited (%v): %s", err, log)
		case <-ctx.Done():
			b.Stop()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			b.Stop()
			return nil, fmt.Errorf("bird's control socket %s did not answer in 10s", b.socket)
		}
	}
}

// Show runs `birdc show ARGS…` and returns its output.
func (b *BIRD) Show(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "birdc", append([]string{"-s", b.socket, "show"}, args...)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("birdc show %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Log is what BIRD printed.
func (b *BIRD) Log() string {
	out, _ := os.ReadFile(filepath.Join(b.Dir, "bird.log"))
	return string(out)
}

// Stop kills BIRD and waits for it.
func (b *BIRD) Stop() {
	b.stop.Do(func() {
		b.cmd.Process.Kill()
		<-b.done
	})
}

// Reconfigure replaces BIRD's config with conf (written atomically) and
// has it load that (`birdc configure`).
func (b *BIRD) Reconfigure(ctx context.Context, conf string) error {
	cf := filepath.Join(b.Dir, "bird.conf")
	tmp := cf + ".new"
	if err := os.WriteFile(tmp, []byte(conf), 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, cf); err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, "birdc", "-s", b.socket, "configure").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Reconfigur") {
		return fmt.Errorf("birdc configure: %v: %s", err, out)
	}
	return nil
}

// PID is BIRD's process id.
func (b *BIRD) PID() int { return b.cmd.Process.Pid }

// LabBIRDConfig is the BIRD config of a lab's router (LabOptions.Router):
// one passive eBGP session (AS 65000) per LB node (AS 65001), hold time
// 3 s, BFD at 100 ms × 3 when bfd, accepting only host routes of the VIP
// networks (/32s, and /128s over the same session), and ECMP into the
// router's kernel tables (merge paths); the lab set the L4 multipath
// hash.
func LabBIRDConfig(l *Lab, bfd bool) string {
	router := LabRouter4.Addr()
	var conf strings.Builder
	fmt.Fprintf(&conf, "log stderr all;\nrouter id %s;\nprotocol device {}\n", router)
	conf.WriteString("protocol kernel k4 { ipv4 { import none; export all; }; merge paths on; }\n")
	conf.WriteString("protocol kernel k6 { ipv6 { import none; export all; }; merge paths on; }\n")
	if bfd {
		conf.WriteString("protocol bfd { interface \"*\" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }; }\n")
	}
	for i, n := range l.Nodes {
		fmt.Fprintf(&conf, "protocol bgp lb%d {\n  local %s as 65000;\n  neighbor %s as 65001;\n  passive on;\n  hold time 3;\n  error wait time 1, 5;\n", i+1, router, n.Addr.Addr())
		if bfd {
			conf.WriteString("  bfd on;\n")
		}
		fmt.Fprintf(&conf, "  ipv4 { import filter { if net ~ [ %s{32,32} ] then accept; reject; }; export none; };\n", LabVIPNet4)
		fmt.Fprintf(&conf, "  ipv6 { import filter { if net ~ [ %s{128,128} ] then accept; reject; }; export none; };\n}\n", LabVIPNet6)
	}
	return conf.String()
}

// Summary is BIRD's view of its sessions (`show protocols`).
func (b *BIRD) Summary(ctx context.Context) (string, error) { return b.Show(ctx, "protocols") }
