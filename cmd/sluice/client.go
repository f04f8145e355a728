package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/sluicelb/sluice/control"
)

// client talks to the daemon over its unix socket.
type client struct {
	socket string
	http   *http.Client
}

func newClient(c *cli.Context) *client { return newClientFor(c.String("socket")) }

func newClientFor(sock string) *client {
	return &client{socket: sock, http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}}
}

func (cl *client) noDaemon(err error) error {
	if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("no sluice daemon is running at %s (start one with: sluice daemon --iface IFACE, or set --socket / SLUICE_SOCKET)", cl.socket)
	}
	if errors.Is(err, syscall.EACCES) {
		return fmt.Errorf("cannot reach the daemon at %s: permission denied (run as root)", cl.socket)
	}
	return err
}

// do sends a request; out receives the JSON answer.
func (cl *client) do(ctx context.Context, method, path string, query url.Values, body, out any) error {
	var rd io.Reader
	if body != nil {
		if raw, ok := body.([]byte); ok {
			rd = bytes.NewReader(raw)
		} else {
			b, err := json.Marshal(body)
			if err != nil {
				return err
			}
			rd = bytes.NewReader(b)
		}
	}
	u := "http://sluice" + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return err
	}
	resp, err := cl.http.Do(req)
	if err != nil {
		return cl.noDaemon(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var e control.ErrorResponse
		if json.NewDecoder(resp.Body).Decode(&e) == nil && e.Error != "" {
			return errors.New(e.Error)
		}
		return fmt.Errorf("daemon answered %s", resp.Status)
	}
	if out == nil {
		return nil
	}
	if w, ok := out.(io.Writer); ok {
		_, err := io.Copy(w, resp.Body)
		return err
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func socketFlag() cli.Flag {
	return &cli.StringFlag{Name: "socket", Value: control.DefaultSocket, EnvVars: []string{"SLUICE_SOCKET"}, Usage: "the daemon's API socket"}
}

func outputFlag() cli.Flag {
	return &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "table", Usage: "table or json"}
}

func wantJSON(c *cli.Context) (bool, error) {
	switch c.String("output") {
	case "table", "":
		return false, nil
	case "json":
		return true, nil
	}
	return false, fmt.Errorf("-o %q: want table or json", c.String("output"))
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func ioPipe() (*io.PipeReader, *io.PipeWriter) { return io.Pipe() }
