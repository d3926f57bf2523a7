/* holder_copies: how a version kept by a child made with a raw clone costs writer threads,
 * by what the child does with the memory (bench/RESULTS.md, the headline's "what bounded
 * the lazy holders"). No shim.
 *
 * Writer threads write 8-byte words of MIB MiB flat out for 5 s (PATTERN random: random
 * words; seq: every 8th word in address order, wrapping, as bench/workloads/seq_sweep.c),
 * in batches of 65,536 writes whose times give the worst stall (the longest batch less
 * the median one, as the benchmark reports it); every PERIOD ms
 * a child is made with a raw clone (exit signal 0) and, by MODE:
 *   none     no child (the baseline)
 *   holder   waits (4 kept alive, the oldest killed): every first write is a kernel copy
 *   touch    writes each page back onto itself (one byte, its value), then waits: the
 *            copies land in the child, the writers' pages are theirs alone
 *   copyout  copies the memory into a shared mapping (4, reused) and exits
 *   fresh    the same into a fresh shared mapping, populated first
 *   memfd    the same with pwrite into a memfd
 *   devnull  reads every page and writes it to /dev/null, then exits (fork's cheapest)
 * Prints the writes per second, the children's mean life, the worst stall, minor faults
 * and system time.
 *
 * Build: cc -O2 -pthread -o /tmp/holder_copies bench/probes/holder_copies.c
 * Run:   /tmp/holder_copies MODE MIB PERIOD_MS [THREADS [PATTERN]]   (e.g. touch 256 450 2)
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <signal.h>
#include <unistd.h>
#include <time.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/resource.h>
#include <fcntl.h>
#include <sys/mman.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec/1e9;}
static char *mem; static size_t n; static volatile int stop; static long counts[8]; static double *life;
static int seq; /* PATTERN seq */
#define BATCH 65536
#define MAX_BATCHES (1 << 20)
static float *batch_us[8]; static long batches[8];
static void *writer(void *a){ long id=(long)a; uint64_t x=88172645463325252ull+id; long c=0; size_t words=n/8;
  size_t pos=(size_t)id*8*4096 % words;
  while(!stop){ double b0=now();
    if(seq) for(int k=0;k<BATCH;k++){ ((uint64_t*)mem)[pos]+=c; pos+=8; if(pos>=words) pos=0; }
    else for(int k=0;k<BATCH;k++){ x^=x<<13;x^=x>>7;x^=x<<17; ((uint64_t*)mem)[x%words]=x; }
    c+=BATCH; if(batches[id]<MAX_BATCHES) batch_us[id][batches[id]++]=(float)((now()-b0)*1e6); }
  counts[id]=c; return 0; }
static int by_value(const void *a,const void *b){ float x=*(const float*)a,y=*(const float*)b; return (x>y)-(x<y); }
/* The longest batch less the median one, over every writer's batches. */
static double worst_stall_ms(int nthreads){ double worst=0;
  for(int i=0;i<nthreads;i++){ if(!batches[i]) continue; qsort(batch_us[i],batches[i],sizeof(float),by_value);
    double s=(batch_us[i][batches[i]-1]-batch_us[i][batches[i]/2])/1e3; if(s>worst) worst=s; }
  return worst; }
int main(int argc,char**argv){
  const char*mode=argv[1]; size_t mib=atoi(argv[2]); int period=atoi(argv[3]); int nthreads=argc>4?atoi(argv[4]):2; seq=argc>5&&!strcmp(argv[5],"seq");
  if(nthreads<1||nthreads>8){ fprintf(stderr,"holder_copies: THREADS is 1 to 8\n"); return 2; }
  for(int i=0;i<nthreads;i++) batch_us[i]=malloc(MAX_BATCHES*sizeof(float));
  n=mib<<20; mem=mmap(0,n,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0); memset(mem,1,n);
  life=mmap(0,4096,PROT_READ|PROT_WRITE,MAP_SHARED|MAP_ANONYMOUS,-1,0); double lsum=0; int lcount=0;
  char *bufs[4]={0}; pid_t kids[4]={0}; int k=0; double clone_max=0; int snaps=0;
  int fresh=!strcmp(mode,"fresh"); int fds[4]={-1,-1,-1,-1};
  if(!strcmp(mode,"memfd")) for(int i=0;i<4;i++){ fds[i]=memfd_create("img",0); ftruncate(fds[i],n);} 
  if(!strcmp(mode,"copyout")) for(int i=0;i<4;i++) bufs[i]=mmap(0,n,PROT_READ|PROT_WRITE,MAP_SHARED|MAP_ANONYMOUS,-1,0);
  pthread_t t[8]; for(long i=0;i<nthreads;i++) pthread_create(&t[i],0,writer,(void*)i);
  struct rusage r0; getrusage(RUSAGE_SELF,&r0);
  double t0=now(), end=t0+5;
  while(now()<end){
    usleep(period*1000);
    if(!strcmp(mode,"none")) continue;
    double c0=now();
    if(kids[k]){ if(!strcmp(mode,"holder")||!strcmp(mode,"touch")) kill(kids[k],SIGKILL); waitpid(kids[k],0,__WALL); kids[k]=0; if(life[k]>0){lsum+=life[k];lcount++;} }
    if(fresh){ if(bufs[k]) munmap(bufs[k],n); bufs[k]=mmap(0,n,PROT_READ|PROT_WRITE,MAP_SHARED|MAP_ANONYMOUS,-1,0);}
    double tc=now(); pid_t pid=syscall(SYS_clone, 0, 0,0,0,0);
    if(pid==0){
      if(!strcmp(mode,"holder")) for(;;) pause();
      if(!strcmp(mode,"touch")){ for(size_t p=0;p<n;p+=4096){ volatile char *q=mem+p; *q=*q; } life[k]=now()-tc; for(;;) pause(); }
      if(!strcmp(mode,"devnull")){ int fd=open("/dev/null",O_WRONLY); for(size_t o=0;o<n;o+=1<<20){ char tmp[4096]; for(size_t p=o;p<o+(1<<20);p+=4096){ memcpy(tmp,mem+p,4096);} write(fd,mem+o,1<<20);} life[k]=now()-tc; syscall(SYS_exit_group,0);}
      if(fds[k]>=0){ for(size_t o=0;o<n;o+=1<<20) pwrite(fds[k],mem+o,1<<20,o); life[k]=now()-tc; syscall(SYS_exit_group,0);}
      if(fresh) madvise(bufs[k],n,23 /*MADV_POPULATE_WRITE*/);
      memcpy(bufs[k],mem,n); life[k]=now()-tc; syscall(SYS_exit_group,0);
    }
    double c1=now(); if(c1-c0>clone_max) clone_max=c1-c0; snaps++;
    kids[k]=pid; k=(k+1)%4;
  }
  stop=1; long total=0; for(int i=0;i<nthreads;i++){pthread_join(t[i],0); total+=counts[i];}
  struct rusage r1; getrusage(RUSAGE_SELF,&r1);
  printf("life %.1f ms | %-8s %4zu MiB %4d ms %d thr %s: %.1f M writes/s, %d snaps, clone max %.1f ms, worst stall %.1f ms, minflt %ld, sys %.2f s\n",lcount?lsum/lcount*1e3:0.0,mode,mib,period,nthreads,seq?"seq":"random",total/5e6,snaps,clone_max*1e3,worst_stall_ms(nthreads),r1.ru_minflt-r0.ru_minflt,
    (r1.ru_stime.tv_sec-r0.ru_stime.tv_sec)+(r1.ru_stime.tv_usec-r0.ru_stime.tv_usec)/1e6);
  for(int i=0;i<4;i++) if(kids[i]){ kill(kids[i],SIGKILL); waitpid(kids[i],0,__WALL);} 
}
