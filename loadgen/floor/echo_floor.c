/*
 * The echo floor: the least a server can do to answer C_ECHO, for scripts/bench to measure
 * beside the real server ("how close to the limit is it?").
 *
 * One thread, level-triggered epoll, non-blocking sockets, no TLS. It speaks only the frame
 * format of docs/PROTOCOL.md (u16 size, u16 id, little-endian, size counting the header) and
 * only C_ECHO: C_ECHO (50) and S_ECHO (51) have the same body (field 1, bytes), so a frame is
 * answered by rewriting its id and sending it back as it came. Any other id, or a size below 4,
 * closes the connection.
 *
 * Build: gcc -O2 -o echo_floor echo_floor.c    Run: echo_floor [PORT] [ADDR]   (7101 127.0.0.1)
 * It prints "listening on ADDR:PORT" once ready and runs until killed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define C_ECHO 50
#define S_ECHO 51
#define HEADER 4
#define MAX_FRAME 65535
#define BUF_CAP (256 * 1024)
#define MAX_EVENTS 256

struct conn {
    int fd;
    /* bytes received, not yet a whole frame, at the start of in */
    size_t in_len;
    /* answers not yet written: out[out_off .. out_len) */
    size_t out_off, out_len;
    int want_write;
    unsigned char in[BUF_CAP];
    unsigned char out[BUF_CAP];
};

static int epfd;

static void close_conn(struct conn *c) {
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c);
}

static void set_events(struct conn *c, int want_write) {
    if (c->want_write == want_write) return;
    struct epoll_event ev = {.events = EPOLLIN | (want_write ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_write = want_write;
}

/* Writes what is pending; returns -1 when the connection is gone. */
static int flush_out(struct conn *c) {
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else {
            return -1;
        }
    }
    if (c->out_off == c->out_len) c->out_off = c->out_len = 0;
    set_events(c, c->out_len > 0);
    return 0;
}

/* Moves every whole frame from in to out with its id rewritten; -1 on a protocol error. */
static int answer_frames(struct conn *c) {
    size_t pos = 0;
    while (c->in_len - pos >= HEADER) {
        unsigned char *f = c->in + pos;
        size_t size = (size_t)f[0] | ((size_t)f[1] << 8);
        unsigned id = (unsigned)f[2] | ((unsigned)f[3] << 8);
        if (size < HEADER || id != C_ECHO) return -1;
        if (c->in_len - pos < size) break;
        if (c->out_len + size > BUF_CAP) {
            /* Reader outpaces the socket: compact, and if still full stop reading for now. */
            if (c->out_off > 0) {
                memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
                c->out_len -= c->out_off;
                c->out_off = 0;
            }
            if (c->out_len + size > BUF_CAP) break;
        }
        memcpy(c->out + c->out_len, f, size);
        c->out[c->out_len + 2] = S_ECHO & 0xff;
        c->out[c->out_len + 3] = S_ECHO >> 8;
        c->out_len += size;
        pos += size;
    }
    if (pos > 0) {
        memmove(c->in, c->in + pos, c->in_len - pos);
        c->in_len -= pos;
    }
    return 0;
}

static void on_readable(struct conn *c) {
    for (;;) {
        if (c->in_len == BUF_CAP) break; /* answers must drain first */
        ssize_t n = recv(c->fd, c->in + c->in_len, BUF_CAP - c->in_len, 0);
        if (n > 0) {
            c->in_len += (size_t)n;
            if (answer_frames(c) < 0) { close_conn(c); return; }
            if ((size_t)n < BUF_CAP) break; /* drained the socket for now (level-triggered) */
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else {
            close_conn(c);
            return;
        }
    }
    if (flush_out(c) < 0) close_conn(c);
}

static void on_writable(struct conn *c) {
    if (flush_out(c) < 0) { close_conn(c); return; }
    /* Room again: answer frames that were waiting for it. */
    if (answer_frames(c) < 0 || flush_out(c) < 0) close_conn(c);
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 7101;
    const char *addr = argc > 2 ? argv[2] : "127.0.0.1";
    signal(SIGPIPE, SIG_IGN);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1) {
        fprintf(stderr, "echo_floor: bad address %s\n", addr);
        return 2;
    }
    if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, 4096) < 0) {
        fprintf(stderr, "echo_floor: cannot listen on %s:%d: %s\n", addr, port, strerror(errno));
        return 1;
    }
    epfd = epoll_create1(0);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &lev);
    printf("listening on %s:%d\n", addr, port);
    fflush(stdout);
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(epfd, events, MAX_EVENTS, -1);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) { perror("epoll_wait"); return 1; }
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c == NULL) {
                for (;;) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                    if (fd < 0) break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *nc = calloc(1, sizeof *nc);
                    if (nc == NULL) { close(fd); continue; }
                    nc->fd = fd;
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
                }
                continue;
            }
            if (events[i].events & (EPOLLERR | EPOLLHUP)) { close_conn(c); continue; }
            if (events[i].events & EPOLLOUT) {
                on_writable(c);
                continue; /* c may be freed; EPOLLIN comes again (level-triggered) */
            }
            if (events[i].events & EPOLLIN) on_readable(c);
        }
    }
}
