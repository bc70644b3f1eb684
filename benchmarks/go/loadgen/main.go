// A load generator for the benchmark, in Go so that it is never the bottleneck. Same flags
// and the same JSON summary as benchmarks/loadgen.py.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type headerList []string

func (h *headerList) String() string     { return strings.Join(*h, ",") }
func (h *headerList) Set(v string) error { *h = append(*h, v); return nil }

func percentile(values []float64, q float64) float64 {
	if len(values) == 0 {
		return -1
	}
	sort.Float64s(values)
	i := int(q * float64(len(values)))
	if i >= len(values) {
		i = len(values) - 1
	}
	return values[i]
}

func round(v float64, digits float64) float64 {
	p := 1.0
	for i := 0.0; i < digits; i++ {
		p *= 10
	}
	return float64(int64(v*p+0.5)) / p
}

func main() {
	url := flag.String("url", "", "target URL")
	body := flag.String("body", `{"model":"bench","messages":[{"role":"user","content":"hi"}]}`, "JSON body")
	concurrency := flag.Int("concurrency", 1, "connections")
	duration := flag.Float64("duration", 5, "seconds")
	requests := flag.Int64("requests", 1<<62, "total requests")
	var headers headerList
	flag.Var(&headers, "header", "name:value")
	flag.Parse()

	transport := &http.Transport{
		MaxIdleConns:        *concurrency * 2,
		MaxIdleConnsPerHost: *concurrency * 2,
		DisableCompression:  true,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
	}
	client := &http.Client{Transport: transport}
	var mu sync.Mutex
	var ttfb, total []float64
	var lines, windowLines, errors int64
	statuses := map[int]int{}
	firstError := ""
	budget := *requests
	start := time.Now()
	deadline := start.Add(time.Duration(*duration * float64(time.Second)))
	recordError := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		errors++
		if firstError == "" {
			firstError = err.Error()
		}
	}
	var wg sync.WaitGroup
	for c := 0; c < *concurrency; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 64*1024)
			for time.Now().Before(deadline) && atomic.AddInt64(&budget, -1) >= 0 {
				t0 := time.Now()
				req, _ := http.NewRequest("POST", *url, bytes.NewBufferString(*body))
				req.Header.Set("Content-Type", "application/json")
				for _, h := range headers {
					parts := strings.SplitN(h, ":", 2)
					req.Header.Set(parts[0], strings.TrimSpace(parts[1]))
				}
				resp, err := client.Do(req)
				if err != nil {
					recordError(err)
					continue
				}
				var first time.Time
				var n, windowN int64
				for {
					k, err := resp.Body.Read(buf)
					if k > 0 {
						if first.IsZero() {
							first = time.Now()
						}
						newLines := int64(bytes.Count(buf[:k], []byte("\n")))
						n += newLines
						if time.Now().Before(deadline) {
							windowN += newLines
						}
					}
					if err == io.EOF {
						break
					}
					if err != nil {
						recordError(err)
						break
					}
				}
				resp.Body.Close()
				done := time.Now()
				if first.IsZero() {
					first = done
				}
				if !strings.Contains(resp.Header.Get("Content-Type"), "ndjson") &&
					!strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
					n = 1
					windowN = 0
					if done.Before(deadline) {
						windowN = 1
					}
				}
				atomic.AddInt64(&windowLines, windowN)
				mu.Lock()
				statuses[resp.StatusCode]++
				if resp.StatusCode != 200 {
					errors++
				} else {
					ttfb = append(ttfb, first.Sub(t0).Seconds())
					total = append(total, done.Sub(t0).Seconds())
					lines += n
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	var firstErr interface{} = nil
	if firstError != "" {
		firstErr = firstError
	}
	out := map[string]interface{}{
		"concurrency": *concurrency, "requests": len(total), "errors": errors,
		"first_error": firstErr, "statuses": statuses, "elapsed_s": round(elapsed, 3),
		"req_per_s": round(float64(len(total))/elapsed, 2), "lines": lines,
		"lines_per_s":        round(float64(lines)/elapsed, 1),
		"window_lines_per_s": round(float64(windowLines)/(*duration), 1),
		"ttfb_p50_ms":        round(percentile(ttfb, 0.5)*1000, 3), "ttfb_p99_ms": round(percentile(ttfb, 0.99)*1000, 3),
		"total_p50_ms": round(percentile(total, 0.5)*1000, 3), "total_p99_ms": round(percentile(total, 0.99)*1000, 3),
	}
	encoded, _ := json.Marshal(out)
	fmt.Fprintln(os.Stdout, string(encoded))
}
