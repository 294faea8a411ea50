/*
 * loadgen: many SSE subscribers in one process, with epoll.
 *
 * Opens N HTTP/1.1 connections to 127.0.0.1:PORT, sends `GET <path>` on each, and parses the
 * answer minimally: the status line, `Transfer-Encoding: chunked` (decoded when present) and
 * the SSE stream, where an event is counted at the blank line that ends it if it had a
 * `data:` line. If a data line holds the timestamp key (default `"t":`), the digits after
 * it are taken as the publish time in microseconds of CLOCK_REALTIME, and publish->receive
 * latency goes into a log-linear histogram (0.2 % resolution).
 *
 * Control, so a harness can run phases:
 *   stdout  "READY {json}" once every connection has its response headers (or the open
 *           timeout passed), then the final JSON report on one line at exit.
 *   stdin   "start"                      reset counters: the measured window begins
 *           "stop <drain_ms> <expected>" the window ends; keep reading until every
 *                                        connection has <expected> events in all (0: none),
 *                                        or every stream has ended, or drain_ms passed
 *           EOF                          same as "stop 0 0"
 *
 * Sockets are closed with SO_LINGER 0 (a reset), so runs leave no TIME_WAIT behind.
 * The process stays under the 20,000 open files limit: N must be at most 19,500.
 *
 * Build: cc -O2 -o loadgen loadgen.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 19500
#define LINE_CAP 256
#define HDR_CAP 4096
#define RBUF (256 * 1024)
#define STDIN_TAG UINT32_MAX
#define MAX_SECONDS 1200

/* Histogram: values < 1024 us are exact; above, 512 sub-buckets per power of two. */
#define HIST_LINEAR 1024
#define HIST_SUB 512
#define HIST_BUCKETS (HIST_LINEAR + 40 * HIST_SUB)

enum { S_IDLE, S_CONNECTING, S_HEADERS, S_BODY, S_ENDED, S_FAILED };
enum { C_SIZE, C_EXT, C_DATA, C_CRLF, C_DONE };

typedef struct {
    int fd;
    uint8_t state;
    uint8_t chunked;
    uint8_t cstate;
    uint8_t last_cr;
    uint8_t has_data;
    uint8_t is_counted_type;
    uint8_t attempts;
    uint8_t done; /* reached the expected count */
    uint32_t chunk_left;
    uint32_t events;      /* events in the measured window and after */
    uint32_t events_all;  /* events since the connection opened */
    uint16_t line_len;
    uint16_t hdr_len;
    char *hdr;            /* response head, only until it is complete */
    int64_t ts;           /* timestamp of the event being parsed, -1 if none */
    int64_t seq;          /* sequence of the event being parsed, -1 if none */
    int64_t last_seq;
    int64_t prev_seq;     /* sequence of the event before the last one */
    uint32_t path_idx;
    char line[LINE_CAP];
} conn_t;

static conn_t *conns;
static int nconns = 1000;
static int port = 8000;
static const char *host = "127.0.0.1";
static const char *default_path = "/events?topic=bench";
static char **paths;
static int npaths;
static int inflight_max = 500;
static double open_timeout = 60.0;
static double max_run = 600.0;
static const char *ts_key = "\"t\":";
static size_t ts_key_len;
static const char *seq_key = NULL;
static size_t seq_key_len;
static const char *count_type = NULL; /* e.g. task_completed */
static size_t count_type_len;
static int max_attempts = 3;
/* When an epoll round finds at least this many sockets ready, pause --coalesce-us before the
 * next one, so each read takes several events: the load generator's cost per event drops
 * (it must never be the bottleneck) at the price of at most that much added latency. */
static int busy_ready = 128;
static int coalesce_us = 1000;
/* --stats-file: live counters a publisher can read (mmap): [0] every event received since
 * the connections opened, [1] connections open. */
static volatile uint64_t *shared_stats;
static uint64_t dummy_stats[2];

static int epfd;
static uint64_t hist[HIST_BUCKETS];
static uint64_t lat_samples, lat_sum_us, lat_max_us;
static uint64_t events_window, events_total, events_at_stop;
static uint64_t counted_type_events, seq_regressions, stale_terminal;
static uint64_t bytes_total, reads_total;
static uint64_t per_second[MAX_SECONDS];
static int started, stopping;
static double t_start, t_stop, t_drain_end;
static double t_open_begin, t_open_end;
static int opened, failed_final, connect_errors, bad_status, ended_streams, closed_streams;
static int inflight, next_slot;
static uint32_t expected_per_conn;
static int done_conns, gone_undone;
static double drain_deadline;
static double now_cached;

static double now_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int64_t now_real_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static int hist_index(uint64_t v) {
    if (v < HIST_LINEAR) return (int)v;
    int msb = 63 - __builtin_clzll(v);
    int shift = msb - 9;
    int idx = HIST_LINEAR + (shift - 1) * HIST_SUB + (int)((v >> shift) - HIST_SUB);
    return idx < HIST_BUCKETS ? idx : HIST_BUCKETS - 1;
}

static uint64_t hist_value(int idx) {
    if (idx < HIST_LINEAR) return (uint64_t)idx;
    int k = idx - HIST_LINEAR;
    int shift = k / HIST_SUB + 1;
    uint64_t mant = (uint64_t)(k % HIST_SUB) + HIST_SUB;
    /* the middle of the bucket */
    return (mant << shift) + ((1ULL << shift) >> 1);
}

static double percentile(double p) {
    if (lat_samples == 0) return -1;
    uint64_t rank = (uint64_t)(p / 100.0 * (double)lat_samples);
    if (rank >= lat_samples) rank = lat_samples - 1;
    uint64_t seen = 0;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        seen += hist[i];
        if (seen > rank) {
            uint64_t v = hist_value(i);
            return (double)(v > lat_max_us ? lat_max_us : v);
        }
    }
    return (double)lat_max_us;
}

static void die(const char *msg) {
    fprintf(stderr, "loadgen: %s: %s\n", msg, strerror(errno));
    exit(2);
}

static void record_event(conn_t *c) {
    c->events_all++;
    shared_stats[0]++;
    if (!started) return;
    c->events++;
    events_total++;
    if (!stopping) {
        events_window++;
        int sec = (int)(now_cached - t_start);
        if (sec >= 0 && sec < MAX_SECONDS) per_second[sec]++;
    }
    if (c->ts >= 0) {
        int64_t d = now_real_us() - c->ts;
        if (d < 0) d = 0;
        hist[hist_index((uint64_t)d)]++;
        lat_samples++;
        lat_sum_us += (uint64_t)d;
        if ((uint64_t)d > lat_max_us) lat_max_us = (uint64_t)d;
    }
    if (c->seq >= 0) {
        if (c->last_seq >= 0 && c->seq <= c->last_seq) seq_regressions++;
        c->prev_seq = c->last_seq;
        c->last_seq = c->seq;
    }
    if (c->is_counted_type) {
        counted_type_events++;
        if (seq_key && c->seq >= 0 && c->prev_seq >= 0 && c->prev_seq != c->seq - 1)
            stale_terminal++;
    }
    if (!c->done && expected_per_conn && c->events >= expected_per_conn) {
        c->done = 1;
        done_conns++;
    }
}

static int64_t parse_digits_after(const char *line, size_t len, const char *key, size_t klen) {
    const char *p = memmem(line, len, key, klen);
    if (!p) return -1;
    p += klen;
    const char *end = line + len;
    while (p < end && (*p == ' ' || *p == '"')) p++;
    if (p >= end || *p < '0' || *p > '9') return -1;
    int64_t v = 0;
    while (p < end && *p >= '0' && *p <= '9') v = v * 10 + (*p++ - '0');
    return v;
}

static void end_line(conn_t *c) {
    size_t n = c->line_len;
    const char *l = c->line;
    if (n == 0) {
        if (c->has_data) record_event(c);
        c->has_data = 0;
        c->is_counted_type = 0;
        c->ts = -1;
        c->seq = -1;
    } else if (n >= 5 && memcmp(l, "data:", 5) == 0) {
        c->has_data = 1;
        if (c->ts < 0) c->ts = parse_digits_after(l, n, ts_key, ts_key_len);
        if (seq_key && c->seq < 0) c->seq = parse_digits_after(l, n, seq_key, seq_key_len);
    } else if (count_type && n >= 6 && memcmp(l, "event:", 6) == 0) {
        const char *v = l + 6;
        size_t vn = n - 6;
        if (vn && *v == ' ') v++, vn--;
        c->is_counted_type = (vn == count_type_len && memcmp(v, count_type, vn) == 0);
    }
    c->line_len = 0;
}

static void feed_sse(conn_t *c, const char *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        char ch = p[i];
        if (ch == '\n') {
            if (c->last_cr) {
                c->last_cr = 0;
                continue;
            }
            end_line(c);
        } else if (ch == '\r') {
            c->last_cr = 1;
            end_line(c);
        } else {
            c->last_cr = 0;
            if (c->line_len < LINE_CAP) c->line[c->line_len++] = ch;
        }
    }
}

static void stream_ended(conn_t *c);

static void feed_body(conn_t *c, const char *p, size_t n) {
    if (!c->chunked) {
        feed_sse(c, p, n);
        return;
    }
    size_t i = 0;
    while (i < n) {
        switch (c->cstate) {
        case C_SIZE: {
            char ch = p[i++];
            int d = -1;
            if (ch >= '0' && ch <= '9') d = ch - '0';
            else if (ch >= 'a' && ch <= 'f') d = ch - 'a' + 10;
            else if (ch >= 'A' && ch <= 'F') d = ch - 'A' + 10;
            if (d >= 0) c->chunk_left = c->chunk_left * 16 + (uint32_t)d;
            else if (ch == ';') c->cstate = C_EXT;
            else if (ch == '\n') {
                if (c->chunk_left == 0) {
                    c->cstate = C_DONE;
                    stream_ended(c);
                    return;
                }
                c->cstate = C_DATA;
            }
            break;
        }
        case C_EXT:
            if (p[i++] == '\n') {
                if (c->chunk_left == 0) {
                    c->cstate = C_DONE;
                    stream_ended(c);
                    return;
                }
                c->cstate = C_DATA;
            }
            break;
        case C_DATA: {
            size_t take = n - i;
            if (take > c->chunk_left) take = c->chunk_left;
            feed_sse(c, p + i, take);
            i += take;
            c->chunk_left -= (uint32_t)take;
            if (c->chunk_left == 0) c->cstate = C_CRLF;
            break;
        }
        case C_CRLF:
            if (p[i++] == '\n') {
                c->cstate = C_SIZE;
                c->chunk_left = 0;
            }
            break;
        default:
            return;
        }
    }
}

static void open_slot(int slot);

static void close_conn(conn_t *c) {
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    free(c->hdr);
    c->hdr = NULL;
}

static void reset_parse(conn_t *c) {
    c->chunked = 0;
    c->cstate = C_SIZE;
    c->chunk_left = 0;
    c->last_cr = 0;
    c->has_data = 0;
    c->is_counted_type = 0;
    c->line_len = 0;
    c->hdr_len = 0;
    c->ts = -1;
    c->seq = -1;
    c->last_seq = -1;
    c->prev_seq = -1;
}

/* A connection that failed before its headers: retry a few times, then give up. */
static void failed_opening(conn_t *c, int slot) {
    close_conn(c);
    inflight--;
    connect_errors++;
    if (c->attempts < max_attempts && now_mono() - t_open_begin < open_timeout) {
        open_slot(slot);
    } else {
        c->state = S_FAILED;
        failed_final++;
    }
}

static void stream_ended(conn_t *c) {
    c->state = S_ENDED;
    ended_streams++;
    if (!c->done) gone_undone++;
    close_conn(c);
}

static void open_slot(int slot) {
    conn_t *c = &conns[slot];
    reset_parse(c);
    c->attempts++;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, host, &sa.sin_addr);
    c->fd = fd;
    c->state = S_CONNECTING;
    inflight++;
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u32 = (uint32_t)slot};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) {
        failed_opening(c, slot);
    }
}

static void send_request(conn_t *c, int slot) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        failed_opening(c, slot);
        return;
    }
    const char *path = npaths ? paths[c->path_idx % (uint32_t)npaths] : default_path;
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n"
                     "Cache-Control: no-cache\r\nUser-Agent: tidings-loadgen\r\n\r\n",
                     path, host, port);
    if (write(c->fd, req, (size_t)n) != n) {
        failed_opening(c, slot);
        return;
    }
    c->state = S_HEADERS;
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)slot};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void got_headers(conn_t *c, int slot, const char *extra, size_t extra_n) {
    /* "HTTP/1.1 200" */
    if (c->hdr_len < 12 || memcmp(c->hdr + 9, "200", 3) != 0) {
        bad_status++;
        if (bad_status <= 3) {
            int show = c->hdr_len < 200 ? c->hdr_len : 200;
            fprintf(stderr, "loadgen: bad answer: %.*s\n", show, c->hdr);
        }
        failed_opening(c, slot);
        return;
    }
    c->hdr[c->hdr_len] = 0;
    char *te = strcasestr(c->hdr, "\ntransfer-encoding:");
    if (te) {
        char *eol = strchr(te + 1, '\n');
        if (eol) *eol = 0;
        c->chunked = strcasestr(te, "chunked") != NULL;
    }
    free(c->hdr);
    c->hdr = NULL;
    c->state = S_BODY;
    inflight--;
    opened++;
    shared_stats[1] = (uint64_t)opened;
    if (opened + failed_final == nconns) t_open_end = now_mono();
    if (extra_n) feed_body(c, extra, extra_n);
}

static void on_head_bytes(conn_t *c, int slot, const char *p, size_t n) {
    if (!c->hdr) {
        c->hdr = malloc(HDR_CAP + 1);
        if (!c->hdr) die("malloc");
        c->hdr_len = 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (c->hdr_len >= HDR_CAP) {
            failed_opening(c, slot);
            return;
        }
        c->hdr[c->hdr_len++] = p[i];
        if (c->hdr_len >= 4 && memcmp(c->hdr + c->hdr_len - 4, "\r\n\r\n", 4) == 0) {
            got_headers(c, slot, p + i + 1, n - i - 1);
            return;
        }
    }
}

static char rbuf[RBUF];

static void on_readable(int slot) {
    conn_t *c = &conns[slot];
    for (;;) {
        ssize_t n = read(c->fd, rbuf, sizeof rbuf);
        reads_total++;
        if (n > 0) {
            bytes_total += (uint64_t)n;
            if (c->state == S_HEADERS) on_head_bytes(c, slot, rbuf, (size_t)n);
            else if (c->state == S_BODY) feed_body(c, rbuf, (size_t)n);
            if (c->fd < 0 || (size_t)n < sizeof rbuf) return;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
        /* EOF or error */
        if (c->state == S_HEADERS || c->state == S_CONNECTING) {
            failed_opening(c, slot);
        } else if (c->state == S_BODY) {
            c->state = S_ENDED;
            closed_streams++;
            if (!c->done) gone_undone++;
            close_conn(c);
        }
        return;
    }
}

static void fill_inflight(void) {
    while (next_slot < nconns && inflight < inflight_max) open_slot(next_slot++);
}

static int live_streams(void) {
    return opened - ended_streams - closed_streams;
}

static void print_json_common(FILE *f) {
    fprintf(f,
            "\"connections_requested\":%d,\"connections_opened\":%d,\"connect_errors\":%d,"
            "\"failed\":%d,\"bad_status\":%d,\"open_seconds\":%.4f",
            nconns, opened, connect_errors, failed_final, bad_status,
            (t_open_end > 0 ? t_open_end : now_mono()) - t_open_begin);
}

static void report(double cpu_start, double cpu_end) {
    double window = (t_stop > 0 ? t_stop : now_mono()) - t_start;
    double total_span = (t_drain_end > 0 ? t_drain_end : now_mono()) - t_start;
    uint32_t min_ev = UINT32_MAX, max_ev = 0;
    for (int i = 0; i < nconns; i++) {
        if (conns[i].state == S_FAILED || conns[i].state == S_IDLE) continue;
        if (conns[i].events < min_ev) min_ev = conns[i].events;
        if (conns[i].events > max_ev) max_ev = conns[i].events;
    }
    if (min_ev == UINT32_MAX) min_ev = 0;
    FILE *f = stdout;
    fprintf(f, "{");
    print_json_common(f);
    fprintf(f,
            ",\"window_seconds\":%.4f,\"drain_seconds\":%.4f,\"events_window\":%llu,"
            "\"events_total\":%llu,\"deliveries_per_second\":%.1f,"
            "\"expected_per_conn\":%u,\"conns_complete\":%d,\"events_min_per_conn\":%u,"
            "\"events_max_per_conn\":%u,\"streams_ended_clean\":%d,\"streams_closed\":%d,"
            "\"counted_type_events\":%llu,\"seq_regressions\":%llu,\"stale_terminal\":%llu,"
            "\"bytes\":%llu,\"reads\":%llu,",
            window, total_span - window, (unsigned long long)events_window,
            (unsigned long long)events_total, window > 0 ? events_window / window : 0.0,
            expected_per_conn, done_conns, min_ev, max_ev, ended_streams, closed_streams,
            (unsigned long long)counted_type_events, (unsigned long long)seq_regressions,
            (unsigned long long)stale_terminal, (unsigned long long)bytes_total,
            (unsigned long long)reads_total);
    fprintf(f,
            "\"latency_us\":{\"samples\":%llu,\"mean\":%.1f,\"p50\":%.0f,\"p90\":%.0f,"
            "\"p99\":%.0f,\"p999\":%.0f,\"max\":%llu,\"cdf\":[",
            (unsigned long long)lat_samples, lat_samples ? (double)lat_sum_us / lat_samples : -1.0,
            percentile(50), percentile(90), percentile(99), percentile(99.9),
            (unsigned long long)lat_max_us);
    /* CDF points for plots: [percentile, us] */
    static const double pts[] = {0.1, 1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90,
                                 95, 97.5, 99, 99.5, 99.9, 99.99, 100};
    for (size_t i = 0; i < sizeof pts / sizeof *pts; i++)
        fprintf(f, "%s[%g,%.0f]", i ? "," : "", pts[i], percentile(pts[i] >= 100 ? 99.9999 : pts[i]));
    fprintf(f, "]},\"per_second\":[");
    int secs = (int)window;
    if (secs > MAX_SECONDS) secs = MAX_SECONDS;
    for (int i = 0; i < secs; i++) fprintf(f, "%s%llu", i ? "," : "", (unsigned long long)per_second[i]);
    double cpu = cpu_end - cpu_start;
    fprintf(f, "],\"loadgen_cpu_seconds\":%.3f,\"loadgen_cpu_share\":%.3f}\n", cpu,
            total_span > 0 ? cpu / total_span : 0.0);
    fflush(f);
}

static void handle_command(char *line, double *cpu_start) {
    if (strncmp(line, "start", 5) == 0) {
        started = 1;
        t_start = now_mono();
        now_cached = t_start;
        *cpu_start = cpu_seconds();
    } else if (strncmp(line, "stop", 4) == 0) {
        unsigned drain_ms = 0, expected = 0;
        sscanf(line + 4, "%u %u", &drain_ms, &expected);
        if (!started) {
            started = 1;
            t_start = now_mono();
            *cpu_start = cpu_seconds();
        }
        stopping = 1;
        t_stop = now_mono();
        events_at_stop = events_total;
        expected_per_conn = expected;
        done_conns = 0;
        gone_undone = 0;
        for (int i = 0; i < nconns; i++) {
            conns[i].done = expected && conns[i].events >= expected;
            done_conns += conns[i].done;
            if (!conns[i].done && conns[i].state == S_ENDED) gone_undone++;
        }
        drain_deadline = t_stop + drain_ms / 1000.0;
    }
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --port P [-n N] [--host H] [--path P | --paths-file F]\n"
            "               [--inflight K] [--open-timeout S] [--max-run S]\n"
            "               [--ts-key K] [--seq-key K] [--count-type T] [--stats-file F]\n"
            "               [--coalesce-us US]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *paths_file = NULL;
    const char *stats_file = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) usage();
        if (!strcmp(a, "--port")) port = atoi(v);
        else if (!strcmp(a, "-n")) nconns = atoi(v);
        else if (!strcmp(a, "--host")) host = v;
        else if (!strcmp(a, "--path")) default_path = v;
        else if (!strcmp(a, "--paths-file")) paths_file = v;
        else if (!strcmp(a, "--inflight")) inflight_max = atoi(v);
        else if (!strcmp(a, "--open-timeout")) open_timeout = atof(v);
        else if (!strcmp(a, "--max-run")) max_run = atof(v);
        else if (!strcmp(a, "--ts-key")) ts_key = v;
        else if (!strcmp(a, "--seq-key")) seq_key = v;
        else if (!strcmp(a, "--count-type")) count_type = v;
        else if (!strcmp(a, "--stats-file")) stats_file = v;
        else if (!strcmp(a, "--coalesce-us")) coalesce_us = atoi(v);
        else usage();
        i++;
    }
    if (nconns < 1 || nconns > MAX_CONNS) {
        fprintf(stderr, "loadgen: -n must be 1..%d (open files limit)\n", MAX_CONNS);
        return 2;
    }
    ts_key_len = strlen(ts_key);
    if (seq_key) seq_key_len = strlen(seq_key);
    if (count_type) count_type_len = strlen(count_type);
    if (paths_file) {
        FILE *pf = fopen(paths_file, "r");
        if (!pf) die("paths file");
        char buf[1024];
        int cap = 0;
        while (fgets(buf, sizeof buf, pf)) {
            buf[strcspn(buf, "\r\n")] = 0;
            if (!buf[0]) continue;
            if (npaths == cap) {
                cap = cap ? cap * 2 : 64;
                paths = realloc(paths, sizeof(char *) * (size_t)cap);
            }
            paths[npaths++] = strdup(buf);
        }
        fclose(pf);
    }
    shared_stats = dummy_stats;
    if (stats_file) {
        int sfd = open(stats_file, O_RDWR | O_CREAT | O_TRUNC, 0644);
        if (sfd < 0 || ftruncate(sfd, 4096) < 0) die("stats file");
        void *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, sfd, 0);
        if (m == MAP_FAILED) die("mmap");
        close(sfd);
        shared_stats = m;
    }
    conns = calloc((size_t)nconns, sizeof(conn_t));
    if (!conns) die("calloc");
    for (int i = 0; i < nconns; i++) {
        conns[i].fd = -1;
        conns[i].path_idx = (uint32_t)i;
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1");
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    struct epoll_event sev = {.events = EPOLLIN, .data.u32 = STDIN_TAG};
    int stdin_polled = epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &sev) == 0;

    double t_begin = now_mono();
    t_open_begin = t_begin;
    double cpu_start = cpu_seconds();
    int ready_printed = 0;
    char cmd[256];
    size_t cmd_len = 0;
    int stdin_eof = !stdin_polled;
    struct epoll_event evs[1024];

    fill_inflight();
    for (;;) {
        int timeout_ms = 100;
        int n = epoll_wait(epfd, evs, 1024, timeout_ms);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        now_cached = now_mono();
        for (int i = 0; i < n; i++) {
            uint32_t slot = evs[i].data.u32;
            if (slot == STDIN_TAG) {
                for (;;) {
                    char ch;
                    ssize_t r = read(0, &ch, 1);
                    if (r == 1) {
                        if (ch == '\n') {
                            cmd[cmd_len] = 0;
                            handle_command(cmd, &cpu_start);
                            cmd_len = 0;
                        } else if (cmd_len < sizeof cmd - 1) {
                            cmd[cmd_len++] = ch;
                        }
                        continue;
                    }
                    if (r == 0) {
                        stdin_eof = 1;
                        epoll_ctl(epfd, EPOLL_CTL_DEL, 0, NULL);
                        if (!stopping) handle_command("stop 0 0", &cpu_start);
                    }
                    break;
                }
                continue;
            }
            conn_t *c = &conns[slot];
            if (c->fd < 0) continue;
            if (c->state == S_CONNECTING) {
                if (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) send_request(c, (int)slot);
                continue;
            }
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable((int)slot);
        }
        fill_inflight();
        if (coalesce_us > 0 && n >= busy_ready) {
            struct timespec pause = {0, coalesce_us * 1000L};
            nanosleep(&pause, NULL);
        }
        double now = now_mono();
        if (!ready_printed &&
            ((opened + failed_final == nconns) || now - t_open_begin > open_timeout)) {
            ready_printed = 1;
            if (t_open_end == 0) t_open_end = now;
            fprintf(stdout, "READY {");
            print_json_common(stdout);
            fprintf(stdout, "}\n");
            fflush(stdout);
        }
        if (stopping) {
            int all_done = expected_per_conn ? done_conns + gone_undone >= opened : 0;
            if (all_done || now >= drain_deadline || live_streams() == 0) break;
        }
        if (now - t_begin > max_run) {
            fprintf(stderr, "loadgen: --max-run reached\n");
            if (!stopping) handle_command("stop 0 0", &cpu_start);
            break;
        }
        (void)stdin_eof;
    }
    t_drain_end = now_mono();
    report(cpu_start, cpu_seconds());
    return 0;
}
