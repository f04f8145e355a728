package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
)

// Client talks to a daemon over its unix socket.
type Client struct {
	Socket string
	http   *http.Client
}

// NewClient is a client of the daemon listening on socket.
func NewClient(socket string) *Client {
	return &Client{Socket: socket, http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}}
}

// Do sends a request and decodes the JSON answer into out (or copies it
// to out, an io.Writer). body is JSON-encoded unless it is a []byte. A
// refusal comes back as the daemon's message; a daemon that cannot be
// reached as the dial error, for the caller to explain.
func (c *Client) Do(ctx context.Context, method, path string, query url.Values, body, out any) error {
	var rd io.Reader
	if body != nil {
		if raw, ok := body.([]byte); ok {
			rd = bytes.NewReader(raw)
		} else {
			b, err := json.Marshal(body)
			if err != nil {
				return fmt.Errorf("encode %s %s: %w", method, path, err)
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
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var e ErrorResponse
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

// maxEventLine bounds one event line read from the daemon.
const maxEventLine = 1 << 20

// Events reads the daemon's kept events, oldest first, and with follow
// every new one, handing each to fn until fn returns false, ctx ends or
// the daemon closes the stream.
func (c *Client) Events(ctx context.Context, follow bool, fn func(Event) bool) error {
	q := url.Values{}
	if follow {
		q.Set("follow", "1")
	}
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		err := c.Do(ctx, http.MethodGet, "/v1/events", q, nil, pw)
		pw.CloseWithError(err)
		errc <- err
	}()
	sc := bufio.NewScanner(pr)
	sc.Buffer(make([]byte, 64<<10), maxEventLine)
	for sc.Scan() {
		var e Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return fmt.Errorf("event from the daemon: %w", err)
		}
		if !fn(e) {
			cancel()
			pr.Close()
			<-errc
			return nil
		}
	}
	pr.Close()
	err := <-errc
	if ctx.Err() != nil {
		return nil
	}
	return err
}
