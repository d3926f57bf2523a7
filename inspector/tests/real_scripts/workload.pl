use strict; use warnings;
use threads; use threads::shared; use Digest::MD5 qw(md5_hex); use Scalar::Util qw(weaken);
my %total :shared;
my @t = map {
    my $n = $_;
    threads->create(sub {
        my %h;
        for my $i (1 .. 60000) { $h{ ($i * 7919 + $n) % 20011 } .= chr(97 + $i % 26); }
        my $d = md5_hex(join ",", map { "$_=$h{$_}" } sort { $a <=> $b } keys %h);
        { lock(%total); $total{$n} = $d; }
        return scalar keys %h;
    });
} 0 .. 3;
my @sizes = map { $_->join } @t;
print "sizes @sizes\n";
print "$_ $total{$_}\n" for sort keys %total;
my $freed = 0;
for my $i (1 .. 50000) {
    my $a = { id => $i }; my $b = { id => -$i, peer => $a }; $a->{peer} = $b; weaken($a->{peer});
    $freed++ if defined $b->{peer};
}
print "cycles $freed\n";
my $s = join "", map { sprintf "%x", $_ * 2654435761 % 4294967296 } 1 .. 100000;
(my $u = $s) =~ s/([a-f])(\d)/$2$1/g;
print length($u), " ", md5_hex($u), "\n";
