package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/testenv"
)

// labDaemon is a `sluice daemon` running in a lab's LB namespace, with its
// state, socket and log under dir.
type labDaemon struct {
	cmd     *exec.Cmd
	logf    *os.File
	logPath string
	client  *client
	socket  string
}

// startLabDaemon starts the daemon on the lab's LB host; wait tells when
// its API answers.
func startLabDaemon(lab *testenv.Lab, dir, metricsAddr string, extra ...string) (*labDaemon, error) {
	return startLabDaemonOn(lab, lab.LB, dir, metricsAddr, extra...)
}

// startLabDaemonOn starts the daemon on one of the lab's LB hosts.
func startLabDaemonOn(lab *testenv.Lab, host *testenv.Host, dir, metricsAddr string, extra ...string) (*labDaemon, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	d := &labDaemon{logPath: filepath.Join(dir, "daemon.log"), socket: filepath.Join(dir, "sluice.sock")}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if d.logf, err = os.Create(d.logPath); err != nil {
		return nil, err
	}
	args := append([]string{"daemon", "--iface", host.Link, "--xdp-mode", "native",
		"--state-dir", filepath.Join(dir, "state"), "--socket", d.socket, "--metrics-addr", metricsAddr,
		"--pin-root", lab.PinRoot(), "--flow-table-size", "65536"}, extra...)
	d.cmd = host.Command(context.Background(), self, args...)
	d.cmd.Stdout, d.cmd.Stderr = d.logf, d.logf
	if err := d.cmd.Start(); err != nil {
		d.logf.Close()
		return nil, err
	}
	d.client = newClientFor(d.socket)
	return d, nil
}

// wait blocks until the daemon's API answers.
func (d *labDaemon) wait(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var st api.Status
		if err := d.client.do(ctx, "GET", "/v1/status", nil, nil, &st); err == nil {
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
func (d *labDaemon) stop() {
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
