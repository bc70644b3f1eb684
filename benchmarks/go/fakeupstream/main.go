// A fast fake Ollama for benchmarks, in Go so that it is never the bottleneck.
//
// POST /api/chat and /api/generate answer like Ollama: NDJSON, one flushed line per token,
// or one JSON object with "stream": false. x-bench-tokens (default 64) and x-bench-delay-ms
// (default 0) set the number of tokens and the pause before each. GET /api/version answers.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

var token = []byte(`{"model":"bench","created_at":"2026-11-27T06:40:39.704198521Z","message":{"role":"assistant","content":"tok "},"done":false}` + "\n")
var final = []byte(`{"model":"bench","created_at":"2026-11-27T06:40:39.704198521Z","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","total_duration":1000,"load_duration":10,"prompt_eval_count":8,"prompt_eval_duration":10,"eval_count":64,"eval_duration":1000}` + "\n")

func header(r *http.Request, name string, fallback int) int {
	if v, err := strconv.Atoi(r.Header.Get(name)); err == nil {
		return v
	}
	return fallback
}

func complete(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	tokens := header(r, "x-bench-tokens", 64)
	delay := time.Duration(header(r, "x-bench-delay-ms", 0)) * time.Millisecond
	stream := !bytes.Contains(bytes.ReplaceAll(body, []byte(" "), nil), []byte(`"stream":false`))
	if !stream {
		if delay > 0 {
			time.Sleep(delay * time.Duration(tokens))
		}
		payload := strings.Replace(string(final[:len(final)-1]), `"content":""`, `"content":"`+strings.Repeat("tok ", tokens)+`"`, 1)
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.Header().Set("Content-Length", strconv.Itoa(len(payload)))
		io.WriteString(w, payload)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	flusher := w.(http.Flusher)
	for i := 0; i < tokens; i++ {
		if delay > 0 {
			time.Sleep(delay)
		}
		w.Write(token)
		flusher.Flush()
	}
	w.Write(final)
}

func main() {
	host := flag.String("host", "127.0.0.1", "address")
	port := flag.Int("port", 11500, "port")
	flag.Parse()
	mux := http.NewServeMux()
	mux.HandleFunc("/api/chat", complete)
	mux.HandleFunc("/api/generate", complete)
	mux.HandleFunc("/api/version", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		io.WriteString(w, `{"version":"0.32.15"}`)
	})
	addr := fmt.Sprintf("%s:%d", *host, *port)
	fmt.Printf("fake upstream on http://%s\n", addr)
	if err := http.ListenAndServe(addr, mux); err != nil {
		panic(err)
	}
}
