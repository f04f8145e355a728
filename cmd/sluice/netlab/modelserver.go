package netlab

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Ports of a lab model server, and the series its queue gauge exports
// (vLLM's name for the requests waiting to be scheduled).
const (
	LabAgentPort   = 9777
	LabMetricsPort = 9100
	LabQueueSeries = "vllm:num_requests_waiting"
)

// ModelServer stands in for a model-serving replica on a lab host: gRPC
// health (grpc-go's server), an agent port answering HAProxy's
// agent-check with a line the test sets, and a Prometheus /metrics page
// (client_golang's) with a queue-depth gauge the test sets.
type ModelServer struct {
	GRPC    *GRPCHealth
	agent   net.Listener
	answer  atomic.Pointer[string]
	answers atomic.Int64
	metrics *http.Server
	queue   prometheus.Gauge
	wg      sync.WaitGroup
}

// StartModelServer serves all three on h (gRPC health on LabGRPCPort),
// the agent answering "up" and the queue at 0 until told otherwise.
func StartModelServer(h *Host) (*ModelServer, error) {
	g, err := StartGRPCHealth(h, LabGRPCPort)
	if err != nil {
		return nil, err
	}
	m := &ModelServer{GRPC: g}
	m.SetAgent("up\n")
	if m.agent, err = h.Listen("tcp", fmt.Sprintf(":%d", LabAgentPort)); err != nil {
		g.Stop()
		return nil, fmt.Errorf("agent on %s: %w", h.Name, err)
	}
	ml, err := h.Listen("tcp", fmt.Sprintf(":%d", LabMetricsPort))
	if err != nil {
		g.Stop()
		m.agent.Close()
		return nil, fmt.Errorf("metrics on %s: %w", h.Name, err)
	}
	reg := prometheus.NewRegistry()
	m.queue = prometheus.NewGauge(prometheus.GaugeOpts{Name: LabQueueSeries, Help: "Requests waiting to be scheduled.",
		ConstLabels: prometheus.Labels{"model_name": "lab"}})
	reg.MustRegister(m.queue)
	m.metrics = &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}
	m.wg.Add(2)
	go func() {
		defer m.wg.Done()
		_ = m.metrics.Serve(ml)
	}()
	go m.serveAgent()
	return m, nil
}

// serveAgent answers each connection with the current line and closes
// it, as HAProxy's agents do.
func (m *ModelServer) serveAgent() {
	defer m.wg.Done()
	for {
		c, err := m.agent.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue
		}
		c.SetDeadline(time.Now().Add(time.Second))
		c.Write([]byte(*m.answer.Load()))
		m.answers.Add(1)
		c.Close()
	}
}

// SetAgent sets the agent's answer, sent as is.
func (m *ModelServer) SetAgent(answer string) { m.answer.Store(&answer) }

// AgentAnswers counts the answers the agent gave.
func (m *ModelServer) AgentAnswers() int64 { return m.answers.Load() }

// SetQueue sets the queue-depth gauge.
func (m *ModelServer) SetQueue(v float64) { m.queue.Set(v) }

// Stop stops the three servers.
func (m *ModelServer) Stop() {
	m.GRPC.Stop()
	m.agent.Close()
	m.metrics.Close()
	m.wg.Wait()
}

// StartModelServers runs a model server on every backend of l, by
// backend name; if one fails, those already started are stopped.
func StartModelServers(l *Lab) (map[string]*ModelServer, error) {
	out := map[string]*ModelServer{}
	for _, b := range l.Backends {
		m, err := StartModelServer(b.Host)
		if err != nil {
			for _, s := range out {
				s.Stop()
			}
			return nil, err
		}
		out[b.Name] = m
	}
	return out, nil
}
