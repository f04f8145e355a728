package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/sluicelb/sluice/cmd/sluice/netlab"
	"github.com/sluicelb/sluice/control/api"
)

// Daemon is a `sluice daemon` running in a lab's LB namespace, with its
// state, socket and log under dir.
type Daemon struct {
	cmd     *exec.Cmd
	logf    *os.File
	logPath string
	Client  *api.Client
	Socket  string
	Args    []string // the daemon's arguments (after the binary)
}

// StartDaemon starts the daemon on the lab's LB host; wait tells when
// its API answers.
func StartDaemon(lab *netlab.Lab, dir, metricsAddr string, extra ...string) (*Daemon, error) {
	return StartDaemonOn(lab, lab.LB, dir, metricsAddr, extra...)
}

// StartDaemonOn starts the daemon on one of the lab's LB hosts.
func StartDaemonOn(lab *netlab.Lab, host *netlab.Host, dir, metricsAddr string, extra ...string) (*Daemon, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	d := &Daemon{logPath: filepath.Join(dir, "daemon.log"), Socket: filepath.Join(dir, "sluice.sock")}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if d.logf, err = os.Create(d.logPath); err != nil {
		return nil, err
	}
	args := append([]string{"daemon", "--iface", host.Link, "--xdp-mode", "native",
		"--state-dir", filepath.Join(dir, "state"), "--socket", d.Socket, "--metrics-addr", metricsAddr,
		"--pin-root", lab.PinRoot(), "--flow-table-size", "65536"}, extra...)
	d.Args = args
	d.cmd = host.Command(context.Background(), self, args...)
	d.cmd.Stdout, d.cmd.Stderr = d.logf, d.logf
	if err := d.cmd.Start(); err != nil {
		d.logf.Close()
		return nil, err
	}
	d.Client = api.NewClient(d.Socket)
	return d, nil
}

// wait blocks until the daemon's API answers.
func (d *Daemon) Wait(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var st api.Status
		if err := d.Client.Do(ctx, "GET", "/v1/status", nil, nil, &st); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			raw, _ := os.ReadFile(d.logPath)
			return fmt.Errorf("the daemon did not start (log %s):\n%s", d.logPath, raw)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stop asks the daemon to stop, and kills it after 5 s.
func (d *Daemon) Stop() {
	if d == nil || d.cmd.Process == nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { d.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		d.cmd.Process.Kill()
		<-done
	}
	d.logf.Close()
}
