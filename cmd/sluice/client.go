package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/sluicelb/sluice/control"
	"github.com/sluicelb/sluice/control/api"
)

// client talks to the daemon over its unix socket and explains a daemon
// that cannot be reached.
type client struct{ api *api.Client }

func newClient(c *cli.Context) *client { return newClientFor(c.String("socket")) }

func newClientFor(sock string) *client { return &client{api: api.NewClient(sock)} }

func (cl *client) noDaemon(err error) error {
	if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("no sluice daemon is running at %s (start one with: sluice daemon --iface IFACE, or set --socket / SLUICE_SOCKET)", cl.api.Socket)
	}
	if errors.Is(err, syscall.EACCES) {
		return fmt.Errorf("cannot reach the daemon at %s: permission denied (run as root)", cl.api.Socket)
	}
	return err
}

// do sends a request; out receives the JSON answer.
func (cl *client) do(ctx context.Context, method, path string, query url.Values, body, out any) error {
	return cl.noDaemon(cl.api.Do(ctx, method, path, query, body, out))
}

// events streams the daemon's events to fn (see api.Client.Events).
func (cl *client) events(ctx context.Context, follow bool, fn func(api.Event) bool) error {
	return cl.noDaemon(cl.api.Events(ctx, follow, fn))
}

func socketFlag() cli.Flag {
	return &cli.StringFlag{Name: "socket", Value: control.DefaultSocket, EnvVars: []string{"SLUICE_SOCKET"}, Usage: "the daemon's API socket"}
}
