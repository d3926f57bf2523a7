require 'digest/md5'
require 'digest/sha2'
require 'json'
Item = Struct.new(:id, :name, :tags)
q = Queue.new
threads = 4.times.map do |n|
  Thread.new do
    h = Hash.new { |hash, k| hash[k] = [] }
    30000.times { |i| h[(i * 7919 + n) % 5003] << "v#{i}" }
    h.each_value { |v| v.shift(v.size / 2) }
    q << [n, h.size, Digest::MD5.hexdigest(h.sort.map { |k, v| "#{k}:#{v.join(',')}" }.join(';'))]
  end
end
threads.each(&:join)
puts 4.times.map { q.pop }.sort.map { |r| r.join(' ') }
items = (1..60000).map { |i| Item.new(i, "item#{i}", (0...(i % 5)).map { |j| "t#{j}" }) }
GC.start
by_tags = items.group_by { |it| it.tags.size }.transform_values(&:size)
puts by_tags.sort.inspect
doc = items.first(20000).map(&:to_h)
text = JSON.generate(doc)
puts text.size, Digest::SHA256.hexdigest(text)
puts JSON.parse(text, symbolize_names: true) == doc
s = (1..200000).map { |i| (i * 2654435761 % 4294967296).to_s(16) }.join
puts s.gsub(/([a-f])(\d)/) { "#{$2}#{$1}" }.then { |u| [u.size, Digest::MD5.hexdigest(u)].join(' ') }
puts "gc runs > 0: #{GC.count > 0}"
